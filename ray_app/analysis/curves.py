"""Scaling curves and verifier diagnostics from the three papers behind the study.

Coverage (Large Language Monkeys, arXiv 2407.21787)
    coverage(k) is the share of questions that at least one of k samples solves, i.e. pass@k averaged
    over questions. Each question's pass@k is the unbiased estimator from all N of its samples, so the
    curve at k = N is the share of questions with some right sample. The paper finds coverage vs k
    fits an exponentiated power law, coverage(k) ~ exp(a * k**b) with a < 0 and b < 0;
    `fit_exponentiated_power_law` fits it as a straight line, log(-log c) = log(-a) + b * log k.

Data scaling (Revisiting the Superficial Alignment Hypothesis, arXiv 2410.03717)
    Post-training task performance scales as a power law in the number of fine-tuning examples,
    y ~ c * x**alpha; `fit_power_law` fits the line log y = log c + alpha * log x.

Verifier (Inference Scaling fLaws, arXiv 2411.17501)
    Resampling gains come only from picking a right sample, so an imperfect verifier (here the
    reward model) caps them. `verifier_stats` measures how well rewards separate right from wrong
    samples (pooled and within-question AUC), how often a wrong sample wins Best-of-N although a right
    one exists (false positives), and the Best-of-N ceiling that follows from both.

All fits are ordinary least squares in the transformed (linear) space, and their r2 is measured there.
Plots are written with matplotlib's Agg backend, like the ones in `report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ray_app.analysis.estimators import SELECTION_STRATEGIES, bootstrap_indices, stable_seed
from ray_app.analysis.report import QuestionSamples
from ray_app.analysis.strategies import pass_at_k

# A few histogram panels stay readable next to the summary panel; more are cut (the title says so).
MAX_HISTOGRAM_PANELS = 3


# ----------------------------------------------------------------------------------------------
# Fits
# ----------------------------------------------------------------------------------------------


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, r2) of the least-squares line y = intercept + slope * x."""
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (intercept + slope * x)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    # A flat y is fitted exactly by the line (the residual is 0 too), so r2 = 1 rather than 0/0.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return float(slope), float(intercept), r2


def _paired_arrays(x, y, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"{x_name} and {y_name} differ in length ({len(x)} vs {len(y)})")
    return x, y


def _require_two(x: np.ndarray, usable: np.ndarray, what: str) -> None:
    """Two usable points at distinct x at least; else the slope is undetermined."""
    distinct = np.unique(x[usable])
    if len(distinct) < 2:
        at = f", all at {distinct[0]:g}" if len(distinct) else ""
        raise ValueError(f"{int(usable.sum())} usable point(s) ({what}{at}) of {len(x)}: "
                         "a fit needs 2 or more at distinct values")


def fit_exponentiated_power_law(k, coverage) -> dict:
    """Fit coverage(k) ~ exp(a * k**b) (Large Language Monkeys).

    Taking logs twice, log(-log c) = log(-a) + b * log k is a line in log k, fitted by least squares
    over the points with k > 0 and 0 < c < 1 (at c = 0 or 1 the double log is infinite: such points say
    nothing about the shape). Returns {"a", "b", "points" (usable points), "r2" (in the transformed
    space)}; raises ValueError when fewer than 2 usable points at distinct k remain.
    """
    k, c = _paired_arrays(k, coverage, "k", "coverage")
    finite = np.isfinite(k) & np.isfinite(c) & (k > 0)
    usable = finite & (c > 0) & (c < 1)
    if finite.any() and not usable.any():
        raise ValueError("coverage is 0 or 1 at every k: nothing to fit")
    _require_two(k, usable, "k > 0 and 0 < coverage < 1")
    b, intercept, r2 = _line_fit(np.log(k[usable]), np.log(-np.log(c[usable])))
    return {"a": -float(np.exp(intercept)), "b": b, "points": int(usable.sum()), "r2": r2}


def fit_power_law(x, y) -> dict:
    """Fit y ~ c * x**alpha (data scaling, Revisiting the Superficial Alignment Hypothesis).

    Least squares on log y = log c + alpha * log x over the points with x > 0 and y > 0 (a log scale
    has no place for the others). Returns {"c", "alpha", "points" (usable points), "r2" (log-log)};
    raises ValueError when fewer than 2 usable points at distinct x remain.
    """
    x, y = _paired_arrays(x, y, "x", "y")
    finite = np.isfinite(x) & np.isfinite(y) & (x > 0)
    usable = finite & (y > 0)
    if finite.any() and not usable.any():
        raise ValueError("y is <= 0 at every point: nothing to fit on a log scale")
    _require_two(x, usable, "x > 0 and y > 0")
    alpha, intercept, r2 = _line_fit(np.log(x[usable]), np.log(y[usable]))
    return {"c": float(np.exp(intercept)), "alpha": alpha, "points": int(usable.sum()), "r2": r2}


def predict(fit: dict, x) -> np.ndarray:
    """Values of a fitted curve at x: exp(a * x**b) for an exponentiated power law, c * x**alpha for a
    power law (told apart by the fit's keys)."""
    x = np.asarray(x, dtype=np.float64)
    if {"a", "b"} <= fit.keys():
        return np.exp(fit["a"] * x ** fit["b"])
    if {"c", "alpha"} <= fit.keys():
        return fit["c"] * x ** fit["alpha"]
    raise ValueError(f"not a fit from this module (keys {sorted(fit)}): expected a, b or c, alpha")


# ----------------------------------------------------------------------------------------------
# Coverage
# ----------------------------------------------------------------------------------------------


def _by_pair(groups: Sequence[QuestionSamples]) -> dict[tuple[str, str], list[QuestionSamples]]:
    """Questions per (model, dataset), sorted by question_id: the order `report.scaling_table` uses,
    so that the same seed resamples the same questions here as in Table 2."""
    pairs: dict[tuple[str, str], list[QuestionSamples]] = {}
    for q in groups:
        pairs.setdefault((q.model, q.dataset), []).append(q)
    return {pair: sorted(qs, key=lambda q: q.question_id) for pair, qs in sorted(pairs.items())}


def coverage_curve(groups: Sequence[QuestionSamples], ks: Sequence[int]):
    """Coverage vs k per model and data set: columns model, dataset, k, coverage (in [0, 1]), questions.

    coverage(k) = mean over questions of the unbiased pass@k from all N samples of each question. A k
    above the smallest N of a model and data set is left out there: pass@k needs k samples, and a curve
    over a set of questions that changes with k would not be one curve.
    """
    import pandas as pd

    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {sorted(ks)}")
    rows = []
    for (model, dataset), qs in _by_pair(groups).items():
        num_samples = min(len(q.preds) for q in qs)
        right = [sum(p == q.gold for p in q.preds) for q in qs]
        for k in sorted(set(ks)):
            if k > num_samples:
                continue
            coverage = float(np.mean([pass_at_k(len(q.preds), c, k) for q, c in zip(qs, right)]))
            rows.append({"model": model, "dataset": dataset, "k": int(k), "coverage": coverage, "questions": len(qs)})
    return pd.DataFrame(rows, columns=["model", "dataset", "k", "coverage", "questions"])


def coverage_fits(curve_df) -> dict[tuple[str, str], dict]:
    """{(model, dataset): exponentiated power-law fit} for every curve in `coverage_curve`'s frame; a
    curve that cannot be fitted maps to {"error": the reason}, which `plot_coverage` shows instead."""
    fits = {}
    for (model, dataset), g in curve_df.groupby(["model", "dataset"], sort=True):
        try:
            fits[(model, dataset)] = fit_exponentiated_power_law(g["k"], g["coverage"])
        except ValueError as exc:
            fits[(model, dataset)] = {"error": str(exc)}
    return fits


# ----------------------------------------------------------------------------------------------
# Verifier
# ----------------------------------------------------------------------------------------------


def _pair_scores(qs: Sequence[QuestionSamples]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, right per question, wrong per question). P[q, q'] sums, over every right sample of question
    q and wrong sample of question q', 1 if the right one has the higher reward and 1/2 on a tie.

    Any multiset of questions (a bootstrap resample) then has the pooled Mann-Whitney numerator
    c' P c for its question counts c, so a resample costs a matrix product instead of a re-sort."""
    rewards = [np.asarray(q.rewards, dtype=np.float64) for q in qs]
    if not all(np.isfinite(r).all() for r in rewards):
        raise ValueError("rewards must be finite numbers: a NaN or infinite reward cannot be ranked")
    right = [np.array([p == q.gold for p in q.preds], dtype=bool) for q in qs]
    num_right = np.array([r.sum() for r in right], dtype=np.float64)
    num_wrong = np.array([len(r) - r.sum() for r in right], dtype=np.float64)
    # Every question's wrong rewards in one padded array; the +inf padding is neither below nor equal
    # to any finite reward, so it adds nothing.
    wrong = np.full((len(qs), max(1, int(num_wrong.max()))), np.inf)
    for i, (x, r) in enumerate(zip(rewards, right)):
        wrong[i, : int(num_wrong[i])] = x[~r]
    pairs = np.empty((len(qs), len(qs)))
    for i, (x, r) in enumerate(zip(rewards, right)):
        mine = x[r][:, None, None]  # (right samples of question i, questions, wrong samples)
        pairs[i] = ((wrong < mine) + 0.5 * (wrong == mine)).sum(axis=(0, 2))
    return pairs, num_right, num_wrong


def verifier_stats(groups: Sequence[QuestionSamples], resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[tuple[str, str], dict]:
    """How well the reward model verifies, per (model, dataset) (Inference Scaling fLaws).

    A sample is right when its pred equals the gold answer (no pred is wrong); samples are in
    sample_idx order. Per (model, dataset), a dict with:

    - auc: pooled AUC over all samples, the chance that a right sample outscores a wrong one (Mann-
      Whitney U / (right * wrong), ties count 1/2); auc_ci_low / auc_ci_high: its percentile bootstrap
      interval over questions (a question's samples move together; they are not independent). The
      draw is `bootstrap_indices(questions, resamples, stable_seed(seed, dataset, questions))` over the
      questions sorted by question_id, the same resampled questions as Table 2's intervals; resamples
      with no right or no wrong sample have no AUC and are left out of the interval.
    - within_question_auc: mean AUC inside a question, over questions with right and wrong samples.
      Best-of-N only ever compares samples of the same question, so this is the AUC that matters for
      selection; the pooled one also rewards ranking easy questions above hard ones.
    - false_positive_rate: of the questions with right and wrong samples, the share where Best-of-N
      over all N picks a wrong one: some wrong sample's reward is above every right sample's, or tied
      with the highest right one and at a lower sample_idx (Best-of-N's tie rule).
    - best_of_n_ceiling: the share of ALL questions where Best-of-N over all N samples picks a right
      sample; questions with no right sample count as misses. Why a ceiling: Best-of-N with n draws
      picks the highest-reward sample, and as n grows that is, with probability going to 1, the
      question's top-reward sample. Drawing n samples from the N we have (with replacement), Best-of-N
      accuracy therefore tends to this share as n grows (with fresh samples, to the same share over
      the model's answer distribution, which this estimates from N); more samples cannot lift it: a
      question whose top-reward sample is wrong (a false positive) or that has no right sample is lost
      however many are drawn. It is a limit, not a bound at each n: at small n Best-of-N can do better
      on a question whose top-reward sample is wrong, because most small draws miss that sample.
    - questions, with_right (questions with a right sample; with_right / questions is coverage at N),
      with_both (right and wrong samples), samples.

    Rates and AUCs are fractions in [0, 1]; an AUC with nothing to compare is NaN.
    """
    out = {}
    for (model, dataset), qs in _by_pair(groups).items():
        pairs, right, wrong = _pair_scores(qs)
        both = (right > 0) & (wrong > 0)
        auc = pairs.sum() / (right.sum() * wrong.sum()) if right.sum() and wrong.sum() else float("nan")

        counts = np.zeros((resamples, len(qs)))
        idx = bootstrap_indices(len(qs), resamples, stable_seed(seed, dataset, len(qs)))
        np.add.at(counts, (np.arange(resamples)[:, None], idx), 1)
        denominator = (counts @ right) * (counts @ wrong)
        numerator = ((counts @ pairs) * counts).sum(axis=1)  # c' P c per resample, as one matrix product
        aucs = numerator[denominator > 0] / denominator[denominator > 0]
        tail = (1 - level) / 2
        low, high = (np.quantile(aucs, [tail, 1 - tail]) if len(aucs) else (float("nan"), float("nan")))

        # np.argmax takes the first maximum: the lowest sample_idx, Best-of-N's tie rule.
        picks_right = np.array([q.preds[int(np.argmax(q.rewards))] == q.gold for q in qs])
        within = np.diag(pairs)[both] / (right[both] * wrong[both])
        out[(model, dataset)] = {
            "auc": float(auc), "auc_ci_low": float(low), "auc_ci_high": float(high),
            "within_question_auc": float(within.mean()) if both.any() else float("nan"),
            "false_positive_rate": float(np.mean(~picks_right[both])) if both.any() else float("nan"),
            "best_of_n_ceiling": float(picks_right.mean()),
            "questions": len(qs), "with_right": int((right > 0).sum()), "with_both": int(both.sum()),
            "samples": int(right.sum() + wrong.sum()),
        }
    return out


def describe_verifier(stats: dict[tuple[str, str], dict]) -> list[str]:
    """One log line per model and data set: AUC with its interval, false positives, the ceiling."""
    return [f"{model} / {dataset}: AUC {s['auc']:.3f} [{s['auc_ci_low']:.3f}, {s['auc_ci_high']:.3f}], "
            f"false positives {100 * s['false_positive_rate']:.1f}%, Best-of-N ceiling {100 * s['best_of_n_ceiling']:.1f}%"
            for (model, dataset), s in stats.items()]


def verifier_table(stats: dict[tuple[str, str], dict]):
    """`verifier_stats` as a tidy frame: one row per model and data set, columns model, dataset, then
    the stats in the order `verifier_stats` gives them."""
    import pandas as pd

    return pd.DataFrame([{"model": model, "dataset": dataset, **s} for (model, dataset), s in stats.items()])


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return matplotlib, plt


def _save(fig, plt, path) -> Path:
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # the legends sit below the axes, off the data
    plt.close(fig)
    return Path(path)


def plot_coverage(curve_df, fits: dict[tuple[str, str], dict], path, strategies_df=None) -> Path:
    """Coverage vs k, one panel per data set, one colour per model, log2 x axis, all in %.

    The fitted exponentiated power law is dashed, its a and b in the legend (a fit that failed shows
    its reason instead). With `strategies_df` (report.scaling_table's long table, accuracy in %), each
    selection strategy's accuracy vs n joins its model's colour, dotted: the gap to coverage is what a
    better selector could still win. pass@n is not drawn again; it is the coverage curve itself.
    """
    matplotlib, plt = _pyplot()
    datasets = sorted(curve_df["dataset"].unique())
    models = sorted(curve_df["model"].unique())
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(models)))
    markers = dict(zip(SELECTION_STRATEGIES, "s^vD"))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.8), dpi=120, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        panel = curve_df[curve_df["dataset"] == dataset]
        ks = sorted(panel["k"].unique())
        for model, g in panel.groupby("model", sort=True):
            g = g.sort_values("k")
            ax.plot(g["k"], 100 * g["coverage"], marker="o", color=colors[model], label=f"{model}: coverage (pass@k)")
            fit = fits.get((model, dataset), {"error": "not fitted"})
            if "error" in fit:
                ax.plot([], [], ls="--", color=colors[model], label=f"{model}: no fit ({fit['error']})")
            else:
                grid = np.geomspace(g["k"].min(), g["k"].max(), 200)
                ax.plot(grid, 100 * predict(fit, grid), ls="--", color=colors[model],
                        label=f"{model}: exp(a·k^b), a={fit['a']:.3g}, b={fit['b']:.3g}, R²={fit['r2']:.3f}")
            if strategies_df is not None:
                mine = strategies_df[(strategies_df["model"] == model) & (strategies_df["dataset"] == dataset)]
                for strategy in SELECTION_STRATEGIES:
                    s = mine[mine["strategy"] == strategy].sort_values("n")
                    if len(s):
                        ax.plot(s["n"], s["accuracy"], ls=":", marker=markers[strategy], ms=4, color=colors[model],
                                label=f"{model}: {strategy}")
        ax.set_xscale("log", base=2)
        ax.set_xticks([k for k in ks if k & (k - 1) == 0 or k == max(ks)])  # powers of two (and N): readable at N = 256
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("samples per question (k, n)")
        ax.set_ylabel("% of questions")
        ax.set_title(dataset, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.suptitle("Coverage vs samples (Large Language Monkeys), fitted exp(a·k^b)")
    return _save(fig, plt, path)


def plot_verifier(groups: Sequence[QuestionSamples], stats: dict[tuple[str, str], dict], path) -> Path:
    """Left: reward histograms of right vs wrong samples, one panel per model and data set (the first
    MAX_HISTOGRAM_PANELS of them). Right: per model and data set, pooled AUC (95% bootstrap bar),
    within-question AUC, false-positive rate, Best-of-N ceiling and coverage at N, as fractions."""
    _, plt = _pyplot()
    pairs = _by_pair(groups)
    shown = list(pairs)[:MAX_HISTOGRAM_PANELS]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(4.2 * len(shown) + 6, 4.4), dpi=120, squeeze=False)
    for ax, (model, dataset) in zip(axes[0], shown):
        qs = pairs[(model, dataset)]
        rewards = np.concatenate([np.asarray(q.rewards, dtype=np.float64) for q in qs])
        right = np.concatenate([[p == q.gold for p in q.preds] for q in qs]).astype(bool)
        # Shared bins, and densities: the right and wrong counts can differ many times over.
        bins = np.histogram_bin_edges(rewards, bins=30)
        for mask, label, color in ((right, "right", "tab:green"), (~right, "wrong", "tab:red")):
            if mask.any():
                ax.hist(rewards[mask], bins=bins, density=True, alpha=0.45, color=color, label=f"{label} ({mask.sum()})")
        ax.set_xlabel("reward")
        ax.set_ylabel("density")
        ax.set_title(f"{model}\n{dataset}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    ax = axes[0][-1]
    labels = [f"{m}\n{d}" for m, d in stats]
    rows = list(stats.values())
    bars = [("pooled AUC", "auc"), ("within-question AUC", "within_question_auc"),
            ("false-positive rate", "false_positive_rate"), ("Best-of-N ceiling", "best_of_n_ceiling")]
    width = 0.8 / (len(bars) + 1)
    x = np.arange(len(rows))
    for i, (name, key) in enumerate(bars):
        values = np.array([r[key] for r in rows])
        err = None
        if key == "auc":
            err = np.abs(np.array([[r["auc_ci_low"] for r in rows], [r["auc_ci_high"] for r in rows]]) - values)
        ax.bar(x + (i - len(bars) / 2) * width, values, width, yerr=err, capsize=3, label=name)
    coverage = [r["with_right"] / r["questions"] for r in rows]
    ax.bar(x + (len(bars) / 2) * width, coverage, width, label="coverage at N", color="lightgray")
    ax.axhline(0.5, color="black", lw=0.8, ls=":", label="chance AUC")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_title("Verifier quality and the Best-of-N ceiling", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.grid(axis="y", alpha=0.3)
    cut = f" (first {len(shown)} of {len(pairs)} shown)" if len(pairs) > len(shown) else ""
    fig.suptitle(f"Reward model as verifier (Inference Scaling fLaws){cut}")
    return _save(fig, plt, path)


def plot_power_law(x, y, fit: dict, path, xlabel: str, ylabel: str, title: str) -> Path:
    """Log-log points with the fitted y = c * x**alpha; points a log axis cannot show are counted in
    the legend rather than dropped silently."""
    _, plt = _pyplot()
    x, y = _paired_arrays(x, y, "x", "y")
    shown = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    fig, ax = plt.subplots(figsize=(6, 4.4), dpi=120)
    if "error" in fit or shown.sum() < 2:
        # No fit (e.g. a tiny model at 0% everywhere): show the points on a linear y axis and say why.
        ax.plot(x, y, "o", label="data")
        ax.set_xscale("log")
        ax.text(0.5, 0.5, f"no power-law fit: {fit.get('error', 'fewer than 2 points above 0')}", transform=ax.transAxes,
                ha="center", va="center", wrap=True, fontsize=9, color="#a00")
    else:
        hidden = f" ({int((~shown).sum())} with x or y <= 0 not shown)" if (~shown).any() else ""
        ax.plot(x[shown], y[shown], "o", label=f"data{hidden}")
        grid = np.geomspace(x[shown].min(), x[shown].max(), 200)
        ax.plot(grid, predict(fit, grid), "--",
                label=f"fit: y = {fit['c']:.3g}·x^{fit['alpha']:.3g}, R²={fit['r2']:.3f} ({fit['points']} points)")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


# ----------------------------------------------------------------------------------------------
# Report files (what jobs/coverage.py and jobs/verifier.py write)
# ----------------------------------------------------------------------------------------------


def _powers_of_two_up_to(n: int) -> list[int]:
    return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n})


def write_coverage_report(df, out_dir, softmax_temperature: float = 1.0, resamples: int = 2000, seed: int = 0) -> dict:
    """coverage.csv / .md / .png and coverage_fit.json from a samples frame with N samples per question:
    coverage at every k <= N with its exponentiated power-law fit, and every selection strategy at
    powers of two up to N (Table 2's estimator: all size-n subsets, or seeded draws of them)."""
    import json

    from ray_app.analysis.report import group_questions, per_question_scores, scaling_table, scaling_wide, to_markdown
    from ray_app.utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_questions(df)
    num_samples = min(len(q.preds) for q in groups)
    curve = coverage_curve(groups, range(1, num_samples + 1))
    fits = coverage_fits(curve)
    ns = _powers_of_two_up_to(num_samples)
    strategies = scaling_table(per_question_scores(groups, ns, "subsets", softmax_temperature, seed=seed), resamples, seed)
    fit_lines = []
    for (model, dataset), fit in fits.items():
        if "error" in fit:
            fit_lines.append(f"- {model} / {dataset}: no fit ({fit['error']})")
        else:
            fit_lines.append(f"- {model} / {dataset}: coverage(k) = exp({fit['a']:.4g} * k^{fit['b']:.4g}), "
                             f"R^2 {fit['r2']:.3f} over {fit['points']} points with 0 < coverage < 1")
    atomic_write_text(out / "coverage.csv", curve.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out / "coverage_strategies.csv", strategies.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out / "coverage_fit.json", json.dumps(
        {f"{m}/{d}": fit for (m, d), fit in fits.items()}, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "coverage.md", (
        f"Accuracy (%) [95% bootstrap CI over questions] with {num_samples} samples per question: pass@n is "
        "coverage, the others pick one answer (averaged over size-n subsets)\n\n"
        + to_markdown(scaling_wide(strategies)) + "\nExponentiated power-law fits of coverage (Large Language Monkeys):\n"
        + "\n".join(fit_lines) + "\n"))
    plot_coverage(curve, fits, out / "coverage.png", strategies_df=strategies)
    return {"curve": curve, "fits": fits, "strategies": strategies, "num_samples": num_samples}


def write_verifier_report(df, out_dir, resamples: int = 2000, seed: int = 0) -> dict:
    """verifier.csv / .md / .png: the reward model as a verifier (AUC with its interval, false
    positives, the Best-of-N ceiling they imply) from a samples frame."""
    from ray_app.analysis.report import group_questions, to_markdown
    from ray_app.utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_questions(df)
    stats = verifier_stats(groups, resamples, seed)
    table = verifier_table(stats)
    shown = table.copy()
    # NaN means nothing to compare (no right sample, or none wrong): say so rather than print 'nan'.
    for col in ("auc", "auc_ci_low", "auc_ci_high", "within_question_auc"):
        shown[col] = shown[col].map(lambda v: "n/a" if v != v else f"{v:.3f}")
    for col in ("false_positive_rate", "best_of_n_ceiling"):
        shown[col] = shown[col].map(lambda v: "n/a" if v != v else f"{100 * v:.1f}%")
    atomic_write_text(out / "verifier.csv", table.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out / "verifier.md", (
        f"The reward model as a verifier: AUC of right vs wrong samples [95% bootstrap CI over questions, {resamples} "
        f"resamples, seed {seed}]; false_positive_rate: questions with right and wrong samples where a wrong one "
        "outranks every right one; best_of_n_ceiling: questions whose top-reward sample is right (Best-of-N's limit "
        "as n grows)\n\n" + to_markdown(shown)))
    plot_verifier(groups, stats, out / "verifier.png")
    return {"stats": stats, "table": table}
