"""One self-contained `report.html` from a report folder: tables, plots and run facts in one file.

Everything is inside the file (plots as data: URIs, styles inline, no scripts, no fonts or links to
fetch), so it opens offline, attaches to an e-mail and survives being copied out of a bucket. It is
built only from what the jobs already wrote into the folder (the Markdown tables, PNGs and
manifests), so `jobs/report.py` can rebuild it at any time and it never disagrees with them.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

from ray_app.analysis.findings import findings
from ray_app.utils.io import atomic_write_text

# Sections in reading order: (file, heading, how it was produced). A missing file skips its section.
TABLES = [
    ("table1_accuracy.md", "Table 1: greedy accuracy on the three test sets",
     "One greedy answer per question and model; accuracy with a 95% Wilson interval (questions are "
     "independent trials), and beside it how many answers end in the trained format 'Final answer: N.'."),
    ("table1_differences.md", "SFT minus base",
     "Percentage points on the same questions; 95% paired bootstrap interval over questions."),
    ("table2_scaling.md", "Table 2: accuracy vs samples per question",
     "Every strategy at n is averaged over all size-n subsets of the N samples (pass@n is then the "
     "unbiased pass@k); 95% percentile bootstrap interval over questions."),
    ("accuracy_vs_n.png", None, None),
    ("table2_differences.md", "Paired differences between strategies and models",
     "Same questions on both sides; 95% paired bootstrap interval."),
    ("table2_first_n.md", "The course's definition: the first n samples",
     "One draw per question (the first n samples in sample order), kept to compare with the course's numbers."),
    ("table3_failures.md", "Table 3: failures although a sample was right",
     "Over all N samples: of the questions with at least one right sample, how often majority vote and "
     "Best-of-N still pick a wrong answer."),
    ("unique_answers_dist.png", None, None),
    ("coverage.md", "Coverage and selection to large N",
     "pass@k from all samples with the exponentiated power-law fit exp(a k^b) of Large Language Monkeys, "
     "and every selection strategy on the same questions."),
    ("coverage.png", None, None),
    ("verifier.md", "The reward model as a verifier",
     "AUC of the reward between right and wrong samples (bootstrap interval over questions), how often "
     "a wrong sample outranks every right one, and the Best-of-N ceiling that implies."),
    ("verifier.png", None, None),
    ("data_scaling.md", "Accuracy vs training examples",
     "One SFT run per training-set size, greedy accuracy on the held-out test set, with a power-law fit."),
    ("data_scaling.png", None, None),
]
MANIFESTS = ("pipeline_manifest.json", "analysis_manifest.json", "coverage_manifest.json",
             "verifier_manifest.json", "data_scaling_manifest.json")

TINY_NOTE = (
    "This run used the embedded tiny models (a few million randomly initialised parameters, trained "
    "for minutes on a CPU). It tests the machinery, not the science: that data, training, sampling, "
    "scoring, estimators and report run end to end and agree with each other. It can show that SFT "
    "teaches the answer format (the 'format' counts in Table 1). It cannot show how well a model "
    "solves math, whether SFT or Best-of-N helps accuracy, or how a real reward model ranks answers "
    "(the tiny reward model is random): accuracies near 0% and Best-of-N as a random pick are expected. "
    "Run a real preset (--preset gemma3-1b) for numbers to read."
)

# Column names as a reader says them (the CSV files keep the names code reads).
HEADER_WORDS = {
    "dataset": "test set", "test_set": "test set", "questions": "questions", "difference": "difference (points)",
    "ci_low": "95% CI from", "ci_high": "95% CI to", "with_a_correct_sample": "questions with a right sample",
    "majority_failures": "majority vote wrong", "majority_failure_rate": "majority vote wrong (%)",
    "best_of_n_failures": "Best-of-N wrong", "best_of_n_failure_rate": "Best-of-N wrong (%)",
    "n": "samples per question", "gsm-symbolic": "GSM-Symbolic", "gsm8k-same_templates": "GSM8K, same templates",
    "gsm8k-non_overlapping": "GSM8K, other templates",
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em;max-width:100%}td{overflow-wrap:anywhere}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}p.how{color:#555;font-size:.9em;margin:.3em 0 1em}
.note{background:#fff4e0;border-left:4px solid #e69500;padding:.7em 1em}img{max-width:100%}
pre{background:#f7f7f7;padding:.7em;overflow:auto;font-size:.8em}
"""


def is_embedded_model(spec: str) -> bool:
    """An embedded tiny preset, or a model fine-tuned from one (its run folder says so)."""
    from ray_app.models.registry import get_preset

    return get_preset(spec) is not None or "tiny-" in spec


def _markdown_table(md: str) -> tuple[str, str, str]:
    """(caption, table html, text after the table) from the Markdown the jobs write: a caption line, a
    blank line, a pipe table, then optional notes."""
    caption, _, body = md.partition("\n\n")
    lines = body.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    after = "\n".join(line for line in lines[len(rows):] if not line.startswith("|")).strip()
    if len(rows) < 2:
        return caption, f"<p>{html.escape(body.strip())}</p>", ""
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head = "".join(f"<th>{html.escape(HEADER_WORDS.get(c, c.replace('_', ' ')))}</th>" for c in cells[0])
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[2:])
    return caption, f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>", after


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def generation_engines(record) -> list[str]:
    """The generation engines a manifest names (every `engine` key, nested): 'hf', or 'vllm 0.32.0' (a bare
    'vllm' from a config gets the version from the manifest's `versions`, or from a fingerprint's record)."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "engine" and isinstance(v, str):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(record)
    installed = (record.get("versions") or {}).get("vllm") if isinstance(record, dict) else None
    named = dict.fromkeys(f"vllm {installed}" if e == "vllm" and installed else e for e in found)
    return [e for e in named if not (e == "vllm" and any(n.startswith("vllm ") for n in named))]


def _facts(folder: Path) -> tuple[str, dict, dict, list[str]]:
    """HTML of the manifests (config, versions, seeds, timings), the models they name (label -> spec),
    the stage timings and the generation engines."""
    blocks, models, timings = [], {}, {}
    engines: list[str] = []
    for name in MANIFESTS:
        path = folder / name
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text())
        models.update({str(k): str(v) for k, v in (manifest.get("models") or {}).items()})
        timings.update({f"{name.split('_manifest')[0]}: {k}": v for k, v in (manifest.get("timings_s") or {}).items()})
        engines += [e for e in generation_engines(manifest) if e not in engines]
        blocks.append(f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(json.dumps(manifest, indent=2))}</pre></details>")
    return "".join(blocks), models, timings, engines


def write_html_report(folder: str | Path, title: str, models: Optional[dict] = None, tiny: Optional[bool] = None) -> Path:
    """Write `folder/report.html` from the tables, plots and manifests in `folder` (a local folder).

    The models (label -> spec; `models`, else those the manifests name) are listed at the top; `tiny`
    forces the embedded-model note on or off (default: on when any of them is an embedded preset)."""
    folder = Path(folder)
    facts, named, timings, engines = _facts(folder)
    models = {**named, **(models or {})}
    if tiny is None:
        tiny = any(is_embedded_model(str(m)) for m in models.values())
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if tiny:
        parts.append(f'<p class="note" id="tiny-model-note"><b>What a tiny-model run can and cannot show.</b> {html.escape(TINY_NOTE)}</p>')
    if models:
        parts.append("<p>Models: " + ", ".join(f"<code>{html.escape(k)}</code> = <code>{html.escape(str(v))}</code>"
                                             for k, v in models.items()) + "</p>")
    if engines:  # which engine made the answers is part of what the numbers mean
        parts.append(f'<p id="generation-engine">Generation engine: <code>{html.escape(", ".join(engines))}</code></p>')
    sections = findings(folder, tiny)
    if sections:
        parts.append('<h2 id="findings">Findings</h2>' + "".join(
            f"<h3>{html.escape(sec.heading)}</h3><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in sec.sentences) + "</ul>"
            for sec in sections))
    for name, heading, how in TABLES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".png"):
            parts.append(_image(path, name[:-4].replace("_", " ")))
            continue
        caption, table, after = _markdown_table(path.read_text())
        parts.append(f"<h2>{html.escape(heading)}</h2>{table}<p class=\"how\">{html.escape(how)} {html.escape(caption)}</p>")
        if after:
            parts.append("<p class=\"how\">" + "<br>".join(html.escape(line.lstrip("- ").replace("`", "")) for line in after.splitlines()) + "</p>")
    curves = sorted(folder.glob("loss_curve*.png"))
    if curves:
        parts.append("<h2>SFT loss</h2>" + "".join(_image(p, p.stem.replace("_", " ")) for p in curves)
                     + '<p class="how">Training loss per optimizer step (completion tokens only), from each SFT run.</p>')
    if timings:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{float(v):.0f}</td></tr>" for k, v in timings.items())
        parts.append(f"<h2>Timings</h2><table><thead><tr><th>stage</th><th>seconds</th></tr></thead><tbody>{rows}</tbody></table>")
    if facts:
        parts.append("<h2>Config, versions, seeds</h2><p class=\"how\">The manifests the jobs wrote, as written.</p>" + facts)
    doc = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    out = folder / "report.html"
    atomic_write_text(out, doc)
    return out
