"""Voting, Best-of-N, failure checks and the analysis job on hand-computed cases."""

import csv
import json
import math

import pytest

from conftest import run_job
from ray_app.analysis.strategies import (
    best_of_n,
    check_bon_failure,
    check_majority_failure,
    get_unique_preds_count,
    majority_vote,
    pass_at_k,
    weighted_majority_vote,
    wilson_interval,
)


def test_majority_vote_ties_go_to_the_first_seen_answer():
    assert majority_vote(["3", "5", "5", "3"]) == "3"
    assert majority_vote(["5", "3", "3", "5"]) == "5"
    assert majority_vote(["1", "2", "2"]) == "2"
    assert majority_vote([None, None, "4"]) == "4"  # None never wins
    assert majority_vote([None, None]) is None
    assert majority_vote(["1", "2", "2", "2"], n=2) == "1"  # only the first n count


def test_best_of_n_ties_go_to_the_lower_sample_index():
    assert best_of_n(["1", "2", "3"], [0.1, 0.9, 0.9]) == "2"
    assert best_of_n(["1", "2", "3"], [0.1, 0.9, 0.9], n=1) == "1"
    assert best_of_n([None, "2"], [5.0, 1.0]) is None  # the top sample had no answer: a wrong pick
    assert best_of_n(["7", "8"], [-3.0, -2.5]) == "8"  # rewards are logits and may be negative


def test_weighted_majority_vote():
    # softmax weights: 5 -> e^-0.8 + e^-0.6 = 0.998; 3 -> e^0 + e^-0.7 = 1.497
    assert weighted_majority_vote(["5", "3", "3", "5"], [0.1, 0.9, 0.2, 0.3]) == "3"
    assert weighted_majority_vote(["4", "9"], [-0.5, -0.5]) == "4"  # tie -> first seen
    assert weighted_majority_vote(["1", "2", "2"], [5.0, 0.0, 0.0]) == "1"  # one confident sample beats two weak ones


def test_unique_counts_and_failure_checks():
    assert get_unique_preds_count(["1", "1", None, "2"]) == 2
    assert get_unique_preds_count([None]) == 0
    preds, rewards = ["2", "2", "7", None], [0.5, 0.4, 0.8, 1.0]
    assert check_majority_failure(preds, "7") is True  # majority 2, a 7 exists
    assert check_bon_failure(preds, rewards, "7") is True  # best reward -> None
    assert check_majority_failure(preds, "7", n=2) is False  # no correct sample in the first 2: not a failure of voting
    assert check_bon_failure(["7", "1"], [0.9, 0.1], "7") is False
    assert check_majority_failure(["1", "1"], "5") is False


@pytest.mark.parametrize("n, c, k, expected", [(4, 2, 1, 0.5), (4, 2, 2, 5 / 6), (4, 1, 2, 0.5), (4, 0, 4, 0.0), (4, 1, 4, 1.0), (8, 3, 3, 1 - 10 / 56)])
def test_pass_at_k_unbiased(n, c, k, expected):
    assert math.isclose(pass_at_k(n, c, k), expected)


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert math.isclose(low, 0.4038, abs_tol=1e-4) and math.isclose(high, 0.5962, abs_tol=1e-4)
    assert wilson_interval(0, 100)[0] < 1e-12 and 0.03 < wilson_interval(0, 100)[1] < 0.04


# Two models; model A: 3 questions x 4 samples, model B: 1 question x 4 samples. Hand-computed below.
HAND = [
    ("A", "q1", "5", ["5", "3", "3", "5"], [0.1, 0.9, 0.2, 0.3]),
    ("A", "q2", "7", ["2", "2", "7", None], [0.5, 0.4, 0.8, 1.0]),
    ("A", "q3", "1", ["1", "1", "1", "1"], [0.0, 0.0, 0.0, 0.0]),
    ("B", "q1", "4", [None, None, "4", "9"], [-1.0, -2.0, -0.5, -0.5]),
]
EXPECTED_TABLE2 = {  # (model, strategy) -> {n: accuracy %}
    ("A", "majority"): {1: 200 / 3, 2: 200 / 3, 4: 200 / 3},
    ("A", "best_of_n"): {1: 200 / 3, 2: 100 / 3, 4: 100 / 3},
    ("A", "weighted_majority"): {1: 200 / 3, 2: 100 / 3, 4: 100 / 3},
    ("A", "pass@n"): {1: 100 * (0.5 + 0.25 + 1) / 3, 2: 100 * (5 / 6 + 0.5 + 1) / 3, 4: 100.0},
    ("B", "majority"): {1: 0.0, 2: 0.0, 4: 100.0},
    ("B", "best_of_n"): {1: 0.0, 2: 0.0, 4: 100.0},
    ("B", "weighted_majority"): {1: 0.0, 2: 0.0, 4: 100.0},
    ("B", "pass@n"): {1: 25.0, 2: 50.0, 4: 100.0},
}


def _write_samples(path):
    rows = []
    for model, qid, gold, preds, rewards in HAND:
        for i, (p, r) in enumerate(zip(preds, rewards)):
            rows.append({"model": model, "dataset": "gsm_symbolic_test", "question_id": qid, "sample_idx": i,
                         "question": f"question {qid}?", "response": f"... Final answer: {p}." if p else "I do not know",
                         "pred": p, "gold": gold, "correct": p == gold, "reward": r, "num_tokens": 10,
                         "finish_reason": "stop"})
    rows.reverse()  # the analysis must order by sample_idx itself
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_analyze_job_gives_the_hand_computed_tables(tmp_path, suffix):
    samples = _write_samples(tmp_path / f"samples{suffix}")
    out = tmp_path / "report"
    run_job("analyze.py", "--samples", str(samples), "--out", str(out), "--ns", "1,2,4")
    with (out / "table2_scaling_long.csv").open() as f:
        got = {(r["model"], r["strategy"], int(r["n"])): float(r["accuracy"]) for r in csv.DictReader(f)}
    for (model, strategy), by_n in EXPECTED_TABLE2.items():
        for n, acc in by_n.items():
            assert math.isclose(got[(model, strategy, n)], acc, abs_tol=1e-3), (model, strategy, n)
    wide = (out / "table2_scaling.csv").read_text().splitlines()
    assert wide[0] == "model,dataset,strategy,n=1,n=2,n=4"
    assert wide[1].startswith("A,gsm_symbolic_test,majority,\"66.7 [20.8, 93.9]\"")
    with (out / "table3_failures.csv").open() as f:
        fail = {r["model"]: r for r in csv.DictReader(f)}
    assert (fail["A"]["with_a_correct_sample"], fail["A"]["majority_failures"], fail["A"]["best_of_n_failures"]) == ("3", "1", "2")
    assert math.isclose(float(fail["A"]["majority_failure_rate"]), 100 / 3, abs_tol=1e-3)
    assert math.isclose(float(fail["A"]["best_of_n_failure_rate"]), 200 / 3, abs_tol=1e-3)
    assert (fail["B"]["majority_failures"], fail["B"]["best_of_n_failures"]) == ("0", "0")
    modes = (out / "failure_modes.txt").read_text()
    assert "question_id: q1" in modes and "question_id: q2" in modes and "question_id: q3" not in modes
    assert "gold: 7   majority: 2   best-of-n pick: None" in modes
    assert "answers: 2 x2, 7 x1, <none> x1" in modes
    for png in ("unique_answers_dist.png", "accuracy_vs_n.png"):
        assert (out / png).stat().st_size > 5_000
    assert "| A |" in (out / "table3_failures.md").read_text()


def test_analyze_job_rejects_bad_samples(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"model": "A", "question_id": "q"}) + "\n")
    proc = run_job("analyze.py", "--samples", str(bad), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "bad.jsonl:1: missing field(s)" in proc.stderr
    assert not (tmp_path / "r").exists()
