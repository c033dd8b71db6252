"""Voting, Best-of-N, failure checks and the analysis job on hand-computed cases."""

import csv
import json
import math

import pytest

import numpy as np

from conftest import run_job
from ray_app.analysis.estimators import (
    bootstrap_indices,
    bootstrap_interval,
    paired_difference,
    sft_base_pairs,
    subset_scores,
    subsets,
)
from ray_app.analysis.strategies import (
    best_of_n,
    check_bon_failure,
    check_majority_failure,
    get_unique_preds_count,
    majority_vote,
    pass_at_k,
    softmax_vote,
    weighted_best_of_n,
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


def test_softmax_vote_and_its_temperature():
    # softmax weights: 5 -> e^-0.8 + e^-0.6 = 0.998; 3 -> e^0 + e^-0.7 = 1.497
    assert softmax_vote(["5", "3", "3", "5"], [0.1, 0.9, 0.2, 0.3]) == "3"
    assert softmax_vote(["4", "9"], [-0.5, -0.5]) == "4"  # tie -> first seen
    assert softmax_vote(["1", "2", "2"], [5.0, 0.0, 0.0]) == "1"  # one confident sample beats two weak ones
    # The temperature is part of the strategy: at T=10, e^0.5 = 1.65 < 2 x e^0 and the pair wins.
    assert softmax_vote(["1", "2", "2"], [5.0, 0.0, 0.0], temperature=10.0) == "2"


def test_weighted_best_of_n_sums_sigmoid_rewards():
    # sigmoid: 0 -> 0.5 each, so '2' has 1.0 against sigmoid(1.5) = 0.818 for '1'.
    assert weighted_best_of_n(["1", "2", "2"], [1.5, 0.0, 0.0]) == "2"
    # Negative logits still count for their answer: 2 x sigmoid(-1) = 0.538 > sigmoid(0) = 0.5.
    assert weighted_best_of_n(["3", "4", "4"], [0.0, -1.0, -1.0]) == "4"
    assert weighted_best_of_n(["7", "8"], [0.2, 0.2]) == "7"  # tie -> first seen
    assert weighted_best_of_n([None, None], [3.0, 1.0]) is None


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


def test_subsets_enumerate_or_draw_seeded():
    assert subsets(4, 2).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    drawn = subsets(16, 8, max_subsets=500, seed=3)
    assert drawn.shape == (500, 8) and (np.diff(drawn, axis=1) > 0).all()
    assert (drawn == subsets(16, 8, max_subsets=500, seed=3)).all()
    assert not (drawn == subsets(16, 8, max_subsets=500, seed=4)).all()
    with pytest.raises(ValueError, match="between 1 and the 4 samples"):
        subsets(4, 5)


def test_drawn_subsets_estimate_the_enumerated_mean():
    preds = ["3", "5", "3", None, "5", "5", "3", "2", "3", "5", "2", "3", "3", "5", "5", "3"]
    rewards = [0.1 * ((7 * i) % 11) - 0.4 for i in range(16)]
    exact = subset_scores(preds, rewards, "3", [8], max_subsets=20_000)
    drawn = subset_scores(preds, rewards, "3", [8], max_subsets=4000, seed=1)
    for key in exact:
        assert abs(exact[key] - drawn[key]) < 0.03, key
    assert exact[("pass@n", 8)] == drawn[("pass@n", 8)] == pass_at_k(16, 7, 8)


def test_every_strategy_at_n_1_is_single_sample_accuracy_and_pass_bounds_them():
    preds, rewards = ["5", "3", None, "5", "2", "5"], [0.3, 2.0, -1.0, 0.0, 0.5, -0.2]
    scores = subset_scores(preds, rewards, "5", [1, 2, 3, 6])
    assert {round(v, 12) for (s, n), v in scores.items() if n == 1} == {0.5}
    for n in (2, 3, 6):
        assert all(v <= scores[("pass@n", n)] + 1e-12 for (s, m), v in scores.items() if m == n)


def test_bootstrap_is_seeded_and_paired_differences_pair_questions():
    idx = bootstrap_indices(100, 2000, seed=7)
    assert (idx == bootstrap_indices(100, 2000, seed=7)).all() and not (idx == bootstrap_indices(100, 2000, seed=8)).all()
    # Every question is exactly 0.25 better on side a, while the questions themselves vary a lot:
    # paired, the interval is exactly [0.25, 0.25]; the sides' own intervals are wide.
    a, b = [1.0, 0.25, 0.75, 0.5] * 5, [0.75, 0.0, 0.5, 0.25] * 5
    idx = bootstrap_indices(20, 2000, seed=0)
    assert paired_difference(a, b, idx) == {"difference": 0.25, "ci_low": 0.25, "ci_high": 0.25}
    low, high = bootstrap_interval(np.array(a), idx)
    assert high - low > 0.2
    # Two questions, differences 1 and 0: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4,
    # so the 95% percentile interval is [0, 1] around the mean 0.5.
    d = paired_difference([1.0, 0.0], [0.0, 0.0], bootstrap_indices(2, 4000, seed=1))
    assert d == {"difference": 0.5, "ci_low": 0.0, "ci_high": 1.0}


def test_sft_base_pairs_by_label():
    assert sft_base_pairs(["small-base", "small-sft", "large-base", "large-sft"]) == [
        ("small-sft", "small-base"), ("large-sft", "large-base")]
    assert sft_base_pairs(["sft", "base", "other"]) == [("sft", "base")]
    assert sft_base_pairs(["small-sft"]) == []


# Two models; model A: 3 questions x 4 samples, model B: 1 question x 4 samples. Hand-computed below.
HAND = [
    ("A", "q1", "5", ["5", "3", "3", "5"], [0.1, 0.9, 0.2, 0.3]),
    ("A", "q2", "7", ["2", "2", "7", None], [0.5, 0.4, 0.8, 1.0]),
    ("A", "q3", "1", ["1", "1", "1", "1"], [0.0, 0.0, 0.0, 0.0]),
    ("B", "q1", "4", [None, None, "4", "9"], [-1.0, -2.0, -0.5, -0.5]),
]
# Subset-averaged accuracy at n, by hand (n=2: the 6 pairs of 4 samples; sigmoid/softmax weights
# pick like Best-of-N on a pair of different answers, and merge on equal ones):
# A q1 (gold 5; 5,3,3,5; r .1,.9,.2,.3): majority 3/6 ({0,1},{0,2} tie -> 5, {0,3}); Best-of-N 2/6
#   ({0,3},{2,3}); weighted 2/6; n=4: majority 5 (tie, first seen), Best-of-N 3, weighted 3 (1.26 vs 1.10).
# A q2 (gold 7; 2,2,7,None; r .5,.4,.8,1): majority 1/6 ({2,3}); Best-of-N 2/6 ({0,2},{1,2});
#   weighted 3/6 ({0,2},{1,2},{2,3}: None has no weight); n=4: all pick 2 or None.
# A q3: always right.  B q1 (gold 4; None,None,4,9; r -1,-2,-.5,-.5): pairs with a 4 and not a 9 or
#   the 4-9 tie (first seen / lower sample_idx) win: 3/6 for every strategy; n=4: the tie -> 4.
EXPECTED_TABLE2 = {  # (model, strategy) -> {n: accuracy %}
    ("A", "majority"): {1: 100 * 1.75 / 3, 2: 100 * 5 / 9, 4: 200 / 3},
    ("A", "best_of_n"): {1: 100 * 1.75 / 3, 2: 100 * 5 / 9, 4: 100 / 3},
    ("A", "weighted_best_of_n"): {1: 100 * 1.75 / 3, 2: 100 * 11 / 18, 4: 100 / 3},
    ("A", "softmax_vote"): {1: 100 * 1.75 / 3, 2: 100 * 11 / 18, 4: 100 / 3},
    ("A", "pass@n"): {1: 100 * (0.5 + 0.25 + 1) / 3, 2: 100 * (5 / 6 + 0.5 + 1) / 3, 4: 100.0},
    **{("B", s): {1: 25.0, 2: 50.0, 4: 100.0} for s in ("majority", "best_of_n", "weighted_best_of_n", "softmax_vote", "pass@n")},
}
# The course's definition: the first n samples only (one draw).
EXPECTED_FIRST_N = {
    ("A", "majority"): {1: 200 / 3, 2: 200 / 3, 4: 200 / 3},
    ("A", "best_of_n"): {1: 200 / 3, 2: 100 / 3, 4: 100 / 3},
    ("A", "weighted_best_of_n"): {1: 200 / 3, 2: 100 / 3, 4: 100 / 3},
    ("A", "softmax_vote"): {1: 200 / 3, 2: 100 / 3, 4: 100 / 3},
    ("A", "pass@n"): {1: 200 / 3, 2: 200 / 3, 4: 100.0},
    **{("B", s): {1: 0.0, 2: 0.0, 4: 100.0} for s in ("majority", "best_of_n", "weighted_best_of_n", "softmax_vote", "pass@n")},
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
    for name, expected in (("table2_scaling_long.csv", EXPECTED_TABLE2), ("table2_first_n_long.csv", EXPECTED_FIRST_N)):
        with (out / name).open() as f:
            got = {(r["model"], r["strategy"], int(r["n"])): r for r in csv.DictReader(f)}
        assert len(got) == sum(len(v) for v in expected.values())
        for (model, strategy), by_n in expected.items():
            for n, acc in by_n.items():
                row = got[(model, strategy, n)]
                assert math.isclose(float(row["accuracy"]), acc, abs_tol=1e-3), (name, model, strategy, n)
                assert float(row["ci_low"]) <= float(row["accuracy"]) + 1e-6 <= float(row["ci_high"]) + 2e-6
    wide = (out / "table2_scaling.csv").read_text().splitlines()
    assert wide[0] == "model,dataset,strategy,n=1,n=2,n=4"
    assert wide[1].startswith("A,gsm_symbolic_test,majority,\"58.3 [")
    assert "FIRST n samples" in (out / "table2_first_n.md").read_text()
    with (out / "table2_differences.csv").open() as f:
        diffs = {(r["comparison"], int(r["n"])): float(r["difference"]) for r in csv.DictReader(f)}
    assert math.isclose(diffs[("A: best_of_n - majority", 2)], 0.0, abs_tol=1e-3)
    assert math.isclose(diffs[("A: best_of_n - majority", 4)], -100 / 3, abs_tol=1e-3)
    assert math.isclose(diffs[("A: weighted_best_of_n - majority", 2)], 100 * (11 / 18 - 5 / 9), abs_tol=1e-3)
    manifest = json.loads((out / "analysis_manifest.json").read_text())
    assert manifest["settings"]["softmax_temperature"] == 1.0 and manifest["settings"]["bootstrap_resamples"] == 2000
    # Same command, same numbers (seeded bootstrap); another seed moves only the intervals.
    out2 = tmp_path / "again"
    run_job("analyze.py", "--samples", str(samples), "--out", str(out2), "--ns", "1,2,4")
    assert (out2 / "table2_scaling.csv").read_bytes() == (out / "table2_scaling.csv").read_bytes()
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


def test_table1_differences_pair_sft_with_base_on_the_same_questions():
    import pandas as pd

    from ray_app.inference.evaluation import table1_differences

    # gsm_symbolic_test: sft right on q1-q3, base on q1 only -> +50 points over 4 questions;
    # gsm8k_same_templates: both right on the same 2 of 2 -> 0, and paired the interval is exactly [0, 0].
    rows = []
    for model, right in (("small-sft", {"q1", "q2", "q3"}), ("small-base", {"q1"})):
        rows += [{"model": model, "dataset": "gsm_symbolic_test", "question_id": q, "correct": q in right} for q in ("q1", "q2", "q3", "q4")]
        rows += [{"model": model, "dataset": "gsm8k_same_templates", "question_id": q, "correct": True} for q in ("a", "b")]
    diffs = table1_differences(pd.DataFrame(rows), resamples=2000, seed=0)
    got = {r.test_set: r for r in diffs.itertuples()}
    assert set(got) == {"gsm-symbolic", "gsm8k-same_templates"} and set(diffs["comparison"]) == {"small-sft - small-base"}
    assert math.isclose(got["gsm-symbolic"].difference, 50.0) and got["gsm-symbolic"].questions == 4
    assert got["gsm-symbolic"].ci_low < 50.0 < got["gsm-symbolic"].ci_high
    assert (got["gsm8k-same_templates"].difference, got["gsm8k-same_templates"].ci_low, got["gsm8k-same_templates"].ci_high) == (0.0, 0.0, 0.0)
