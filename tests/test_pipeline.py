"""The whole study with no arguments but an output folder: the embedded tiny preset on a local Ray cluster."""

import csv
import json
import time

import pytest

from browser import render
from conftest import run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """README's main command (the default pipeline) into a folder of its own, timed."""
    out = tmp_path_factory.mktemp("pipeline") / "study"
    started = time.perf_counter()
    proc = run_job("pipeline.py", "--out-dir", str(out), timeout=3000)
    return out, proc, time.perf_counter() - started


def _tables(report) -> dict:
    return {p.name: p.read_bytes() for p in sorted(report.glob("table*"))}


def test_default_pipeline_leaves_the_report(study):
    out, proc, _ = study
    report = out / "report"
    assert f"[pipeline] report: {report}/README.md" in proc.stdout
    for name in ("table1_accuracy.csv", "table1_accuracy.md", "table1_differences.csv", "table2_scaling.csv", "table2_scaling.md",
                 "table2_first_n.md", "table2_differences.md", "table3_failures.csv", "table3_failures.md", "failure_modes.txt",
                 "README.md", "pipeline_manifest.json"):
        assert (report / name).stat().st_size > 0, name
    for png in ("accuracy_vs_n.png", "unique_answers_dist.png", "loss_curve_small.png", "loss_curve_large.png"):
        assert (report / png).stat().st_size > 5_000, png

    with (report / "table1_accuracy.csv").open() as f:
        table1 = {r["model"]: r for r in csv.DictReader(f)}
    assert set(table1) == {"small-base", "small-sft", "large-base", "large-sft"}
    with (report / "table2_scaling.csv").open() as f:
        table2 = list(csv.DictReader(f))
    assert {(r["model"], r["strategy"]) for r in table2} == {
        (m, s) for m in ("small-base", "small-sft") for s in ("majority", "best_of_n", "weighted_best_of_n", "softmax_vote", "pass@n")}
    assert list(table2[0])[-4:] == ["n=1", "n=2", "n=4", "n=8"]
    with (report / "table1_differences.csv").open() as f:
        diffs = {(r["comparison"], r["test_set"]) for r in csv.DictReader(f)}
    assert diffs == {(f"{size}-sft - {size}-base", t) for size in ("small", "large")
                     for t in ("gsm-symbolic", "gsm8k-same_templates", "gsm8k-non_overlapping")}

    # report.html, as a reader gets it in a browser: the tiny-model note first, Table 1 with the format
    # share beside each accuracy, every plot decoded, nothing fetched from outside the file.
    page = render(report / "report.html")
    assert page["requests"] == [] and all(i["ok"] for i in page["images"]) and len(page["images"]) >= 4
    assert "What a tiny-model run can and cannot show." in "\n".join(page["text"].splitlines()[:3])
    assert page["headings"][:2] == ["Findings", "Table 1: greedy accuracy on the three test sets"]
    assert "nothing here is a finding about real models" in page["text"]
    assert "small-sft vs small-base" in page["text"] and "Best-of-N minus majority vote: n=1: " in page["text"]
    assert page["tables_cut"] == 0, "a table is wider than the 1280 px page"
    assert "## Findings" in (report / "README.md").read_text()
    table1 = {row[0]: row[1:] for row in page["tables"][0][1:]}
    assert set(table1) == {"small-base", "small-sft", "large-base", "large-sft"}
    assert all("; format " in cell and cell.endswith("/40") for cells in table1.values() for cell in cells)
    assert {"SFT loss", "Timings", "Config, versions, seeds"} <= set(page["headings"])

    manifest = json.loads((report / "pipeline_manifest.json").read_text())
    assert set(manifest["timings_s"]) == {"data", "sft_small", "sft_large", "evaluate", "sample_and_score", "analyze", "total"}
    assert manifest["versions"]["ray"] and manifest["seeds"] == {"data": 1234, "sft": 1234, "sample": 1234}
    assert manifest["sampling_overlap"]["first_score_before_last_generation"] is True
    samples = json.loads((out / "samples" / "sample_manifest.json").read_text())
    assert samples["rows"] == 2 * 30 * 8
    # The fine-tuned models learned the answer format (what the report says SFT teaches a tiny model;
    # measured 26/40 and 25/40 on gsm-symbolic); their bases did not.
    sft_manifest = json.loads((out / "sft" / "sft-tiny-gemma3-small" / "run_manifest.json").read_text())
    losses = [h["loss"] for h in sft_manifest["log_history"] if "loss" in h]
    assert losses[-1] < losses[0] / 2
    with (report / "table1_accuracy.csv").open() as f:
        formats = {r["model"]: float(r["gsm-symbolic_format"]) for r in csv.DictReader(f)}
    assert formats["small-sft"] >= 50 and formats["large-sft"] >= 40 and formats["small-base"] < 10 and formats["large-base"] < 10, formats
    # One generation actor per core in both generation stages (the tiny preset's pipeline section).
    evaluation = json.loads((out / "eval" / "eval_manifest.json").read_text())
    assert evaluation["config"]["actors_per_model"] == 2 and samples["config"]["actors_per_model"] == 2


def test_rerun_reuses_every_stage(study):
    """README's main command again, same settings: every stage reused, the same tables, a fraction of
    the time, and no Ray started."""
    out, first, first_seconds = study
    tables = _tables(out / "report")
    started = time.perf_counter()
    proc = run_job("pipeline.py", "--out-dir", str(out), timeout=1200)
    seconds = time.perf_counter() - started
    print(f"\npipeline: first run {first_seconds:.0f}s, rerun {seconds:.0f}s ({seconds / first_seconds:.1%})")
    log = proc.stdout
    assert "[data] reusing the data sets in" in log
    assert log.count("[sft] reusing the finished run") == 2
    assert log.count("[eval]") >= 4 and log.count("reusing 120 greedy answers") == 4
    assert "[sample] every (model, question) pair is already scored" in log
    assert "[ray] started" not in log and "[ray] connected" not in log
    assert _tables(out / "report") == tables
    assert seconds < 0.2 * first_seconds


def test_changed_settings_redo_only_what_they_affect(study):
    """Another temperature (sampled on fewer questions) and a longer small SFT in one rerun: the small SFT trains on from its checkpoint,
    what uses that model (its evaluation, sampling) and what the temperature decides (sampling) are redone;
    the large SFT and the other three evaluations are reused."""
    out, _, _ = study
    small_sft = out / "sft" / "sft-tiny-gemma3-small" / "final_model" / "train_summary.json"
    large_sft = out / "sft" / "sft-tiny-gemma3-large" / "final_model" / "train_summary.json"
    eval_parts = sorted(p.name for p in (out / "eval" / "parts").iterdir())
    large_before, small_before = large_sft.read_bytes(), json.loads(small_sft.read_text())

    steps = small_before["global_step"] + 10
    # (On 10 of the 30 questions: --sample-limit only chooses questions, so it is no changed setting, and the
    # resampling the new temperature forces costs a third.)
    proc = run_job("pipeline.py", "--out-dir", str(out), "--temperature", "0.9", "--small-max-steps", str(steps),
                   "--sample-limit", "10", timeout=1800)
    log = proc.stdout
    assert log.count("[sft] reusing the finished run") == 1 and "sft-tiny-gemma3-large" in log.split("[sft] reusing the finished run")[1]
    assert json.loads(small_sft.read_text())["global_step"] == steps and large_sft.read_bytes() == large_before
    # Trained on from the finished run's last checkpoint in storage, not from step 0.
    small_run = json.loads((out / "sft" / "sft-tiny-gemma3-small" / "run_manifest.json").read_text())
    assert (small_run["resumed_from_checkpoint"], small_run["resumed_from_step"]) == (True, small_before["global_step"])
    assert log.count("reusing 120 greedy answers") == 3 and "[eval] small-sft: 120 greedy answers in" in log
    new_parts = sorted(p.name for p in (out / "eval" / "parts").iterdir())
    assert len(new_parts) == len(eval_parts) + 1
    assert "[pipeline] sampling settings changed (" in log and "temperature: 0.7 -> 0.9" in log
    assert json.loads((out / "samples" / "sampling_config.json").read_text())["settings"]["temperature"] == 0.9
    assert json.loads((out / "report" / "pipeline_manifest.json").read_text())["config"]["sample"]["temperature"] == 0.9
    manifest = json.loads((out / "samples" / "sample_manifest.json").read_text())
    assert f":step{steps}" in manifest["settings"]["models"]["small-sft"]
    assert manifest["rows"] == 2 * 10 * 8
