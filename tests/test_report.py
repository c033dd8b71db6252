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
    assert page["headings"][:5] == ["Findings", "Table 2: accuracy vs samples per question", "Paired differences between strategies and models",
                                    "The course's definition: the first n samples", "Table 3: failures although a sample was right"]
    assert "nothing here is a finding about real models" in page["text"]
    assert "A on gsm_symbolic_test, Best-of-N minus majority vote: n=1: " in page["text"]
    table2 = page["tables"][0]
    assert table2[0] == ["model", "test set", "strategy", "n=1", "n=2", "n=4"]  # headers in words
    assert page["tables_cut"] == 0, "a table is wider than the 1280 px page"
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
    assert "Findings" in page["headings"] and "nothing here is a finding about real models" not in page["text"]


def test_report_job_says_what_is_missing(tmp_path):
    proc = run_job("report.py", "--report", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no report outputs there" in proc.stderr and "jobs/analyze.py first" in proc.stderr
    assert not (tmp_path / "report.html").exists()


def _csv(path, header: str, *rows: str) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def test_findings_follow_the_intervals_of_hand_made_tables(tmp_path):
    """Each sentence comes from a table: an interval that excludes 0 is a change, one that includes 0 is not."""
    from ray_app.analysis.findings import findings, findings_markdown

    _csv(tmp_path / "table1_differences.csv", "comparison,test_set,difference,ci_low,ci_high,questions",
         "sft - base,gsm-symbolic,30.0000,21.0000,39.0000,100",          # excludes 0: raised
         "sft - base,gsm8k-same_templates,4.0000,-2.0000,10.0000,100",   # includes 0: no change shown
         "sft - base,gsm8k-non_overlapping,-8.0000,-14.0000,-2.0000,100")  # excludes 0, below: lowered
    _csv(tmp_path / "table2_differences.csv", "dataset,comparison,n,difference,ci_low,ci_high,questions",
         "gsm_symbolic_test,base: best_of_n - majority,2,5.0000,1.0000,9.0000,100",
         "gsm_symbolic_test,base: best_of_n - majority,8,-1.0000,-4.0000,2.0000,100",
         "gsm_symbolic_test,base: weighted_best_of_n - majority,8,3.0000,1.0000,5.0000,100",  # not this section's
         "gsm_symbolic_test,sft - base: majority,8,9.0000,1.0000,20.0000,100")               # nor this
    _csv(tmp_path / "table3_failures.csv",
         "model,dataset,n,questions,with_a_correct_sample,majority_failures,majority_failure_rate,best_of_n_failures,best_of_n_failure_rate",
         "base,gsm_symbolic_test,8,100,40,10,25.0000,14,35.0000")
    _csv(tmp_path / "failures_to_inspect.csv", "model,dataset,strategy,question_id,unique_answers,gold,picked",
         *[f"base,gsm_symbolic_test,majority,q{i},{3 if i < 2 else 5},7,4" for i in range(5)])

    sections = {s.heading: s.sentences for s in findings(tmp_path, tiny=False)}
    sft = sections["Does SFT change greedy accuracy?"]
    assert sft[0] == "gsm-symbolic: sft vs base +30.0 points [21.0, 39.0] on 100 questions: SFT raised accuracy (the interval excludes 0)."
    assert sft[1].endswith("no change is shown (the interval includes 0).")
    assert sft[2].endswith("SFT lowered accuracy (the interval excludes 0).")
    assert sft[3].startswith("sft's gains, largest first: gsm-symbolic (+30.0 points), then gsm8k-same_templates (+4.0 points), "
                             "then gsm8k-non_overlapping (-8.0 points); not all intervals overlap")
    assert sections["Majority vote or Best-of-N?"] == [
        "base on gsm_symbolic_test, Best-of-N minus majority vote: n=2: +5.0 points [1.0, 9.0], Best-of-N better; "
        "n=8: -1.0 points [-4.0, 2.0], no difference shown."]
    assert sections["Failures although a sample was right"] == [
        "base on gsm_symbolic_test: of the 40 of 100 questions with a right answer among 8 samples, majority vote picked "
        "a wrong one for 10 (25%) and Best-of-N for 14 (35%)."]
    inspect = sections["Failures to look at"][0]
    assert "q0 (3 unique answers" in inspect and "q2 (5 unique answers" in inspect and "q3" not in inspect  # 3 per strategy
    assert "What these findings are" not in sections
    tiny = findings(tmp_path, tiny=True)
    assert tiny[0].heading == "What these findings are" and "nothing here is a finding about real models" in tiny[0].sentences[0]
    assert findings_markdown(tiny).startswith("## Findings\n\n### What these findings are\n")


def test_failures_to_inspect_put_three_unique_answers_first():
    from ray_app.analysis.report import QuestionSamples, failures_to_inspect

    def q(qid, preds, rewards):
        return QuestionSamples("base", "gsm_symbolic_test", qid, "?", "7", preds, rewards, [""] * len(preds))

    groups = [q("a", ["1", "1", "7", "2", "3"], [0.9, 0.1, 0.2, 0.3, 0.4]),   # 4 unique, majority 1 wrong, BoN 1 wrong
              q("b", ["1", "1", "7", "2"], [0.1, 0.1, 0.2, 0.9]),              # 3 unique, majority 1 wrong, BoN 2 wrong
              q("c", ["7", "7", "1"], [0.1, 0.2, 0.9]),                        # majority right, BoN 1 wrong (2 unique)
              q("d", ["1", "2"], [0.5, 0.5])]                                  # no right sample: not a failure of either
    df = failures_to_inspect(groups)
    assert list(zip(df["strategy"], df["question_id"])) == [("best_of_n", "b"), ("best_of_n", "c"), ("best_of_n", "a"),
                                                            ("majority", "b"), ("majority", "a")]
    assert list(df[df["strategy"] == "majority"]["picked"]) == ["1", "1"]
