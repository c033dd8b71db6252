"""report.html: self-contained, read in real headless Chromium, rebuilt by jobs/report.py."""

import json

from browser import render
from conftest import run_job
from test_analysis import _write_samples


def _analyzed(tmp_path, models: str, reward: str):
    samples_dir = tmp_path / "samples"
    samples_dir.mkdir()
    samples = _write_samples(samples_dir / "samples.jsonl")
    # What jobs/sample.py leaves beside its samples: the report names the models from it.
    (samples_dir / "sample_manifest.json").write_text(json.dumps({"config": {"models": models, "reward_model": reward}}))
    out = tmp_path / "report"
    run_job("analyze.py", "--samples", str(samples), "--out", str(out), "--ns", "1,2,4")
    return out


def test_report_html_renders_in_chromium_with_everything_inside(tmp_path):
    out = _analyzed(tmp_path, "A=tiny-gemma3-small,B=sft/sft-tiny-gemma3-small/final_model", "tiny-llama-reward")
    page = render(out / "report.html")
    assert page["requests"] == [] and page["scripts"] == 0  # nothing fetched from outside the file
    # The first lines say what a tiny-model run can and cannot show.
    first_lines = page["text"].splitlines()[:3]
    assert first_lines[0] == page["title"] == "Inference-time scaling: selection strategies vs samples per question"
    assert any(line.startswith("What a tiny-model run can and cannot show.") for line in first_lines)
    assert "tests the machinery, not the science" in page["text"]
    # Tables as a reader sees them, each with a sentence on how it was produced.
    assert page["headings"][:4] == ["Table 2: accuracy vs samples per question", "Paired differences between strategies and models",
                                    "The course's definition: the first n samples", "Table 3: failures although a sample was right"]
    table2 = page["tables"][0]
    assert table2[0] == ["model", "dataset", "strategy", "n=1", "n=2", "n=4"]
    assert table2[1][:3] == ["A", "gsm_symbolic_test", "majority"] and table2[1][3].startswith("58.3 [")
    assert "averaged over all size-n subsets" in page["text"] and "paired bootstrap" in page["text"]
    # Both plots decoded by the browser, from the file itself.
    assert [i["alt"] for i in page["images"]] == ["accuracy vs n", "unique answers dist"]
    assert all(i["ok"] and i["w"] > 300 for i in page["images"])
    assert "analysis_manifest.json" in page["text"] and "A = sft/sft-tiny-gemma3-small/final_model" not in page["text"]
    assert "B = sft/sft-tiny-gemma3-small/final_model" in page["text"]

    # jobs/report.py rebuilds the same page from the outputs alone (title kept).
    before = (out / "report.html").read_bytes()
    (out / "report.html").write_text("<html><head><title>" + page["title"] + "</title></head></html>")
    proc = run_job("report.py", "--report", str(out))
    assert f"[report] done: {out}/report.html" in proc.stdout
    assert (out / "report.html").read_bytes() == before


def test_report_html_of_real_models_has_no_tiny_note(tmp_path):
    out = _analyzed(tmp_path, "base=google/gemma-3-1b-it,sft=s3://bucket/gsm/sft/sft-gemma-3-1b-it/final_model",
                    "Skywork/Skywork-Reward-V2-Llama-3.1-8B")
    page = render(out / "report.html")
    assert "tiny-model" not in page["text"] and "google/gemma-3-1b-it" in page["text"]


def test_report_job_says_what_is_missing(tmp_path):
    proc = run_job("report.py", "--report", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no report outputs there" in proc.stderr and "jobs/analyze.py first" in proc.stderr
    assert not (tmp_path / "report.html").exists()
