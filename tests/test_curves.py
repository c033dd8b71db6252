"""Curves and verifier stats (ray_app.analysis.curves): fits on synthetic data with known parameters,
hand-computed coverage and verifier numbers, seeded bootstrap, and the plots. No Ray."""

import itertools

import numpy as np
import pandas as pd
import pytest

from ray_app.analysis.curves import (
    coverage_curve,
    coverage_fits,
    fit_exponentiated_power_law,
    fit_power_law,
    plot_coverage,
    plot_power_law,
    plot_verifier,
    predict,
    verifier_stats,
    verifier_table,
)
from ray_app.analysis.estimators import bootstrap_indices, stable_seed
from ray_app.analysis.report import QuestionSamples

K = 2.0 ** np.arange(11)  # 1 .. 1024


def q(qid, preds, rewards, gold="1", model="m", dataset="d"):
    return QuestionSamples(model, dataset, qid, f"question {qid}", gold, list(preds), list(rewards), [""] * len(preds))


# ---------------------------------------------------------------------------------------------- fits


def test_exponentiated_power_law_recovers_known_parameters():
    coverage = np.exp(-1.5 * K ** -0.4)  # 0.22 at k = 1 .. 0.91 at k = 1024
    fit = fit_exponentiated_power_law(K, coverage)
    assert fit["a"] == pytest.approx(-1.5, abs=1e-6)
    assert fit["b"] == pytest.approx(-0.4, abs=1e-6)
    assert fit["points"] == 11 and fit["r2"] == pytest.approx(1.0)
    np.testing.assert_allclose(predict(fit, K), coverage, rtol=1e-9)

    noisy = np.clip(coverage + np.random.default_rng(0).normal(0, 0.005, len(K)), 1e-6, 1 - 1e-6)
    fit = fit_exponentiated_power_law(K, noisy)
    assert fit["a"] == pytest.approx(-1.5, abs=0.1)
    assert fit["b"] == pytest.approx(-0.4, abs=0.05)
    assert fit["r2"] > 0.98


def test_exponentiated_power_law_uses_only_points_strictly_between_0_and_1():
    coverage = np.exp(-1.5 * K ** -0.4)
    fit = fit_exponentiated_power_law(np.r_[K, 2048, 4096], np.r_[coverage, 1.0, 1.0])
    assert fit["points"] == 11 and fit["a"] == pytest.approx(-1.5, abs=1e-6)


@pytest.mark.parametrize("k, coverage, message", [
    ([1, 2, 4], [0.0, 1.0, 1.0], "coverage is 0 or 1 at every k: nothing to fit"),
    ([1, 2, 4], [0.5, 1.0, 1.0], "1 usable point"),
    ([2, 2], [0.3, 0.4], "all at 2"),
    ([1, 2], [0.3], "differ in length"),
])
def test_exponentiated_power_law_says_why_it_cannot_fit(k, coverage, message):
    with pytest.raises(ValueError, match=message):
        fit_exponentiated_power_law(k, coverage)


def test_power_law_recovers_known_parameters():
    x = np.array([10, 30, 100, 300, 1000, 3000, 4500])
    y = 0.05 * x ** 0.3
    fit = fit_power_law(x, y)
    assert fit["c"] == pytest.approx(0.05, rel=1e-9)
    assert fit["alpha"] == pytest.approx(0.3, abs=1e-9)
    assert fit["points"] == 7 and fit["r2"] == pytest.approx(1.0)
    np.testing.assert_allclose(predict(fit, x), y, rtol=1e-9)

    noisy = y * np.exp(np.random.default_rng(1).normal(0, 0.02, len(x)))
    fit = fit_power_law(np.r_[0, x], np.r_[0.01, noisy])  # x = 0 has no log: left out
    assert fit["points"] == 7
    assert fit["c"] == pytest.approx(0.05, rel=0.15)
    assert fit["alpha"] == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("x, y, message", [
    ([1, 2, 3], [0, -1, 0], "y is <= 0 at every point"),
    ([1, 2, 3], [0.2, 0, 0], "1 usable point"),
    ([0, -1, 5], [0.1, 0.2, 0.3], "1 usable point"),
])
def test_power_law_says_why_it_cannot_fit(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y)


def test_predict_rejects_other_dicts():
    with pytest.raises(ValueError, match="not a fit"):
        predict({"auc": 0.5}, [1, 2])


# ---------------------------------------------------------------------------------------------- coverage


def test_coverage_curve_is_mean_unbiased_pass_at_k():
    groups = [
        # 1 right of 4: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2, pass@4 = 1
        q("a", ["1", "2", None, "3"], [0] * 4),
        # 0 right: 0 at every k
        q("b", ["2", "2", "2", None], [0] * 4),
        # 2 right of 4: pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1
        q("c", ["1", "5", "1", "6"], [0] * 4),
        # another model: 4 right of 4 -> 1 at every k
        q("a", ["1"] * 4, [0] * 4, model="m2"),
    ]
    df = coverage_curve(groups, [4, 1, 2, 8])  # k = 8 > 4 samples: left out
    assert list(df.columns) == ["model", "dataset", "k", "coverage", "questions"]
    m = df[df["model"] == "m"]
    assert m["k"].tolist() == [1, 2, 4]
    np.testing.assert_allclose(m["coverage"], [(1 / 4 + 0 + 1 / 2) / 3, (1 / 2 + 0 + 5 / 6) / 3, 2 / 3])
    assert (m["questions"] == 3).all()
    assert df[df["model"] == "m2"]["coverage"].tolist() == [1.0, 1.0, 1.0]

    fits = coverage_fits(df)
    assert set(fits[("m", "d")]) == {"a", "b", "points", "r2"} and fits[("m", "d")]["points"] == 3
    assert fits[("m2", "d")] == {"error": "coverage is 0 or 1 at every k: nothing to fit"}
    with pytest.raises(ValueError, match="k must be >= 1"):
        coverage_curve(groups, [0, 1])


# ---------------------------------------------------------------------------------------------- verifier

# gold "1": "1" is right, anything else (or None) wrong.
HAND = [
    q("q1", ["1", "7", "1"], [0.9, 0.2, 0.5]),  # right {.9,.5} > wrong {.2}: AUC 2/2 = 1; BoN idx0 right
    q("q2", ["7", "1", "7"], [0.7, 0.7, 0.1]),  # tie .7: wrong idx0 < right idx1 -> BoN wrong (FP);
    #                                             AUC (1/2 + 1)/2 = 0.75
    q("q3", ["1", "7"], [0.4, 0.4]),  # tie .4: right idx0 wins -> no FP; AUC 1/2
    q("q4", ["7", "7", "1"], [0.6, 0.8, 0.3]),  # wrong .8 on top -> FP; AUC 0/2 = 0
    q("q5", ["7", None], [0.5, 0.1]),  # no right sample: a miss for the ceiling, not in the FP rate
    q("q6", ["1", "1"], [0.2, 0.6]),  # all right: BoN right
]


def test_verifier_stats_by_hand():
    s = verifier_stats(HAND, resamples=200, seed=0)[("m", "d")]
    # questions 6; with a right sample: q1-q4, q6 = 5; with both: q1-q4 = 4; samples 3+3+2+3+2+2 = 15
    assert (s["questions"], s["with_right"], s["with_both"], s["samples"]) == (6, 5, 4, 15)
    # false positives: q2 (tie, wrong has the lower index) and q4 -> 2 of 4
    assert s["false_positive_rate"] == 0.5
    # Best-of-N right: q1, q3, q6 -> 3 of all 6 questions
    assert s["best_of_n_ceiling"] == 0.5
    # within-question: (1 + 0.75 + 0.5 + 0) / 4
    assert s["within_question_auc"] == pytest.approx(0.5625)
    # pooled: right R = .9 .5 .7 .4 .3 .2 .6 (7), wrong W = .2 .7 .1 .4 .6 .8 .5 .1 (8), 56 pairs.
    # Per right r, #W below r + 1/2 #W equal r:
    # .9: 8 | .7: 6 + .5 | .6: 5 + .5 | .5: 4 + .5 | .4: 3 + .5 | .3: 3 | .2: 2 + .5  -> 33.5
    assert s["auc"] == pytest.approx(33.5 / 56)
    assert s["auc_ci_low"] <= s["auc"] <= s["auc_ci_high"]


def _brute_auc(questions):
    right = [r for x in questions for p, r in zip(x.preds, x.rewards) if p == x.gold]
    wrong = [r for x in questions for p, r in zip(x.preds, x.rewards) if p != x.gold]
    if not right or not wrong:
        return None
    return sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(right, wrong)) / (len(right) * len(wrong))


def test_verifier_bootstrap_is_the_pooled_auc_of_resampled_questions_and_seeded():
    stats = verifier_stats(HAND, resamples=300, seed=3)[("m", "d")]
    # The same draw by brute force: questions (sorted by id) resampled with replacement, AUC re-pooled.
    idx = bootstrap_indices(6, 300, stable_seed(3, "d", 6))
    aucs = [a for row in idx if (a := _brute_auc([HAND[i] for i in row])) is not None]
    np.testing.assert_allclose([stats["auc_ci_low"], stats["auc_ci_high"]], np.quantile(aucs, [0.025, 0.975]))

    again = verifier_stats(HAND, resamples=300, seed=3)[("m", "d")]
    other = verifier_stats(HAND, resamples=300, seed=4)[("m", "d")]
    assert again == stats
    assert (other["auc_ci_low"], other["auc_ci_high"]) != (stats["auc_ci_low"], stats["auc_ci_high"])
    assert other["auc"] == stats["auc"]


def test_verifier_table_one_row_per_model_and_dataset():
    groups = HAND + [q("q1", ["1", "2"], [0.1, 0.3], model="m2")]
    table = verifier_table(verifier_stats(groups, resamples=50))
    assert table[["model", "dataset"]].values.tolist() == [["m", "d"], ["m2", "d"]]
    row = table.iloc[1]
    assert row["auc"] == 0.0 and row["false_positive_rate"] == 1.0 and row["best_of_n_ceiling"] == 0.0
    assert np.isnan(verifier_stats([q("x", ["1"], [0.3])], resamples=10)[("m", "d")]["auc"])
    with pytest.raises(ValueError, match="finite"):
        verifier_stats([q("x", ["1", "2"], [0.3, float("nan")])], resamples=10)


# ---------------------------------------------------------------------------------------------- plots


def _synthetic_groups(models=("base", "sft"), questions=40, samples=8):
    rng = np.random.default_rng(0)
    groups = []
    for m, model in enumerate(models):
        for i in range(questions):
            right = rng.random(samples) < 0.2 + 0.4 * m + 0.3 * rng.random()
            rewards = rng.normal(np.where(right, 1.0, -0.5), 1.0)
            groups.append(q(f"{i:03d}", ["1" if r else "2" for r in right], rewards.tolist(), model=model))
    return groups


def test_plots_write_pngs(tmp_path):
    groups = _synthetic_groups()
    curve = coverage_curve(groups, [1, 2, 4, 8])
    strategies = pd.DataFrame([{"model": m, "dataset": "d", "strategy": s, "n": n, "accuracy": 20 + 5 * n,
                                "ci_low": 10, "ci_high": 60}
                               for m in ("base", "sft") for s in ("majority", "best_of_n", "pass@n") for n in (1, 2, 4, 8)])
    fits = coverage_fits(curve)
    for name, path in [
        ("coverage", plot_coverage(curve, fits, tmp_path / "coverage.png", strategies)),
        ("coverage_plain", plot_coverage(curve, {}, tmp_path / "coverage_plain.png")),
        ("verifier", plot_verifier(groups, verifier_stats(groups, resamples=200), tmp_path / "verifier.png")),
        ("power", plot_power_law([50, 100, 500, 1000, 4500], [0.2, 0.24, 0.31, 0.36, 0.5],
                                 fit_power_law([50, 100, 500, 1000, 4500], [0.2, 0.24, 0.31, 0.36, 0.5]),
                                 tmp_path / "power.png", "training examples", "accuracy", "data scaling")),
    ]:
        assert path.exists() and path.stat().st_size > 5_000, name


def test_power_law_plot_without_a_fit_says_why(tmp_path):
    # A tiny model at 0% at every size: no fit, the points and the reason are shown instead.
    x, y = [100, 300, 1000], [0.0, 0.0, 0.0]
    with pytest.raises(ValueError) as e:
        fit_power_law(x, y)
    path = plot_power_law(x, y, {"error": str(e.value)}, tmp_path / "none.png", "rows", "accuracy (%)", "no fit")
    assert path.stat().st_size > 5_000
