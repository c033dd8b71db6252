"""From a samples file to Tables 2-3, plots and failure-mode traces.

Samples schema (one row per generated answer; Parquet or JSONL):

    model, dataset, question_id, sample_idx, question, response, pred, gold, correct, reward,
    num_tokens, finish_reason

`pred` and `gold` are normalised numbers as strings (`pred` null when no number was found),
`reward` the reward model's score of (question, response).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ray_app.analysis.estimators import (
    MAX_SUBSETS,
    STRATEGIES,
    STRATEGY_MEANING,
    bootstrap_indices,
    bootstrap_interval,
    first_n_scores,
    paired_difference,
    sft_base_pairs,
    stable_seed,
    subset_scores,
)
from ray_app.analysis.strategies import (
    best_of_n,
    check_bon_failure,
    check_majority_failure,
    get_unique_preds_count,
    majority_vote,
)
from ray_app.utils.io import DataError, atomic_write_text

SAMPLE_COLUMNS = [
    "model", "dataset", "question_id", "sample_idx", "question", "response",
    "pred", "gold", "correct", "reward", "num_tokens", "finish_reason",
]


@dataclass
class QuestionSamples:
    model: str
    dataset: str
    question_id: str
    question: str
    gold: str
    preds: list
    rewards: list
    responses: list


def read_samples(path: str | Path):
    """Samples as a DataFrame, from .parquet or .jsonl; missing columns are named in the error."""
    import pandas as pd

    from ray_app import storage

    if not storage.is_file(str(path)):
        raise DataError(f"{path}: samples file not found")
    path = storage.local_copy(str(path))
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix in (".jsonl", ".json"):
        from ray_app.utils.io import read_jsonl

        df = pd.DataFrame(read_jsonl(path, required=SAMPLE_COLUMNS))
    else:
        raise DataError(f"{path}: expected a .parquet or .jsonl samples file")
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise DataError(f"{path}: no samples")
    df = df.copy()
    # Object columns: pandas' string dtype would turn a missing prediction (None) back into NaN.
    df["pred"] = pd.Series([_as_pred(p) for p in df["pred"]], index=df.index, dtype=object)
    df["gold"] = df["gold"].map(str).astype(object)
    df["question_id"] = df["question_id"].map(str).astype(object)
    return df


def _as_pred(value):
    if value is None or (isinstance(value, float) and value != value) or value is getattr(__import__("pandas"), "NA"):
        return None
    return str(value)


def group_questions(df) -> list[QuestionSamples]:
    groups = []
    for (model, dataset, qid), g in df.sort_values("sample_idx").groupby(["model", "dataset", "question_id"], sort=True):
        groups.append(
            QuestionSamples(model, dataset, qid, g["question"].iloc[0], g["gold"].iloc[0],
                            [_as_pred(p) for p in g["pred"]], [float(r) for r in g["reward"]], list(g["response"]))
        )
    return groups


def per_question_scores(groups: Sequence[QuestionSamples], ns: Sequence[int], estimator: str = "subsets",
                        softmax_temperature: float = 1.0, max_subsets: int = MAX_SUBSETS, seed: int = 0):
    """Long frame: model, dataset, question_id, strategy, n, score (expected correctness in [0, 1]).

    estimator 'subsets': averaged over all size-n subsets of the N samples (Table 2);
    'first_n': the first n samples only, the course's definition (table2_first_n).
    """
    import pandas as pd

    rows = []
    for q in groups:
        usable = [n for n in ns if n <= len(q.preds)]
        if estimator == "subsets":
            scores = subset_scores(q.preds, q.rewards, q.gold, usable, softmax_temperature, max_subsets,
                                   stable_seed(seed, q.model, q.dataset, q.question_id))
        elif estimator == "first_n":
            scores = first_n_scores(q.preds, q.rewards, q.gold, usable, softmax_temperature)
        else:
            raise ValueError(f"unknown estimator {estimator!r}")
        rows += [{"model": q.model, "dataset": q.dataset, "question_id": q.question_id, "strategy": strategy, "n": n,
                  "score": score} for (strategy, n), score in scores.items()]
    return pd.DataFrame(rows)


def _question_matrix(per_question, model: str, dataset: str):
    """(question ids, questions x (strategy, n) score matrix) of one model on one data set, ids sorted."""
    part = per_question[(per_question["model"] == model) & (per_question["dataset"] == dataset)]
    return part.pivot_table(index="question_id", columns=["strategy", "n"], values="score", aggfunc="first").sort_index()


def scaling_table(per_question, resamples: int = 2000, seed: int = 0):
    """Long table: model, dataset, strategy, n, accuracy (%), 95% bootstrap CI, questions.

    One bootstrap draw of questions per data set, shared by every model and cell on it (seeded), so
    intervals are reproducible and differences can be read pairwise."""
    import pandas as pd

    rows = []
    for model, dataset in sorted(set(zip(per_question["model"], per_question["dataset"]))):
        matrix = _question_matrix(per_question, model, dataset)
        matrix = matrix.dropna(axis=1)  # an n larger than some question's sample count
        idx = bootstrap_indices(len(matrix), resamples, stable_seed(seed, dataset, len(matrix)))
        low, high = bootstrap_interval(matrix.to_numpy(), idx)
        for j, (strategy, n) in enumerate(matrix.columns):
            rows.append({"model": model, "dataset": dataset, "strategy": strategy, "n": int(n),
                         "accuracy": 100 * float(matrix.iloc[:, j].mean()), "ci_low": 100 * float(low[j]),
                         "ci_high": 100 * float(high[j]), "questions": len(matrix)})
    order = {s: i for i, s in enumerate(STRATEGIES)}
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "dataset", "strategy", "n"], key=lambda c: c.map(order) if c.name == "strategy" else c,
                          kind="stable").reset_index(drop=True)


def differences_table(per_question, resamples: int = 2000, seed: int = 0,
                      within=(("best_of_n", "majority"), ("weighted_best_of_n", "majority"))):
    """Paired differences (percentage points) a reader asks about, with paired bootstrap intervals:
    per model, Best-of-N minus majority (and weighted Best-of-N minus majority) at each n; across models,
    SFT minus base (pairs found by label, see `sft_base_pairs`) per strategy and n. Only questions both
    sides answered are compared."""
    import pandas as pd

    rows = []
    datasets = sorted(set(per_question["dataset"]))
    models = sorted(set(per_question["model"]))
    for dataset in datasets:
        mats = {m: _question_matrix(per_question, m, dataset) for m in models}
        comparisons = []
        for m, mat in mats.items():
            for a, b in within:
                for n in sorted({n for s, n in mat.columns if s == a}):
                    if (b, n) in mat.columns:
                        comparisons.append((f"{m}: {a} - {b}", n, mat[(a, n)], mat[(b, n)]))
        for sft, base in sft_base_pairs(models):
            for strategy, n in mats[sft].columns:
                if (strategy, n) in mats[base].columns:
                    comparisons.append((f"{sft} - {base}: {strategy}", n, mats[sft][(strategy, n)], mats[base][(strategy, n)]))
        for label, n, a, b in comparisons:
            common = a.dropna().index.intersection(b.dropna().index)
            if not len(common):
                continue
            idx = bootstrap_indices(len(common), resamples, stable_seed(seed, dataset, len(common)))
            d = paired_difference(a[common].to_numpy(), b[common].to_numpy(), idx)
            rows.append({"dataset": dataset, "comparison": label, "n": int(n), "difference": 100 * d["difference"],
                         "ci_low": 100 * d["ci_low"], "ci_high": 100 * d["ci_high"], "questions": len(common)})
    return pd.DataFrame(rows, columns=["dataset", "comparison", "n", "difference", "ci_low", "ci_high", "questions"])


def failures_table(groups: Sequence[QuestionSamples], n: int | None = None):
    """Of the questions with at least one correct sample, how often majority / Best-of-N still fail."""
    import pandas as pd

    rows = []
    for model, dataset in sorted({(q.model, q.dataset) for q in groups}):
        qs = [q for q in groups if (q.model, q.dataset) == (model, dataset)]
        with_correct = [q for q in qs if any(p == q.gold for p in q.preds[:n])]
        maj = sum(check_majority_failure(q.preds, q.gold, n) for q in qs)
        bon = sum(check_bon_failure(q.preds, q.rewards, q.gold, n) for q in qs)
        k = len(with_correct)
        rows.append({
            "model": model, "dataset": dataset, "n": n or min(len(q.preds) for q in qs), "questions": len(qs),
            "with_a_correct_sample": k,
            "majority_failures": maj, "majority_failure_rate": 100 * maj / k if k else 0.0,
            "best_of_n_failures": bon, "best_of_n_failure_rate": 100 * bon / k if k else 0.0,
        })
    return pd.DataFrame(rows)


def _inspection_order(q: QuestionSamples) -> tuple:
    """Per model and test set, questions with exactly 3 unique answers first (the course's manual
    analysis asks for those), then by unique answers and id."""
    unique = get_unique_preds_count(q.preds)
    return (q.model, q.dataset, unique != 3, unique, q.question_id)


def failures_to_inspect(groups: Sequence[QuestionSamples]):
    """Every question where majority vote or Best-of-N picked a wrong answer although one of all N samples
    was right, one row per strategy, in the order a person should read them (`_inspection_order`)."""
    import pandas as pd

    rows = []
    for q in sorted(groups, key=_inspection_order):
        for strategy, failed, picked in (("majority", check_majority_failure(q.preds, q.gold), majority_vote(q.preds)),
                                         ("best_of_n", check_bon_failure(q.preds, q.rewards, q.gold), best_of_n(q.preds, q.rewards))):
            if failed:
                rows.append({"model": q.model, "dataset": q.dataset, "strategy": strategy, "question_id": q.question_id,
                             "unique_answers": get_unique_preds_count(q.preds), "gold": q.gold, "picked": picked})
    columns = ["model", "dataset", "strategy", "question_id", "unique_answers", "gold", "picked"]
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "dataset", "strategy"], kind="stable")


def to_markdown(df, float_format: str = "{:.1f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = [float_format.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scaling_wide(long_df):
    """Table 2 as people read it: rows model x strategy, columns n, cells 'acc [lo, hi]'."""
    long_df = long_df.copy()
    long_df["cell"] = long_df.apply(lambda r: f"{r.accuracy:.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}]", axis=1)
    wide = long_df.pivot_table(index=["model", "dataset", "strategy"], columns="n", values="cell", aggfunc="first")
    wide.columns = [f"n={c}" for c in wide.columns]
    order = {s: i for i, s in enumerate(STRATEGIES)}
    wide = wide.reset_index()
    wide["_o"] = wide["strategy"].map(order)
    return wide.sort_values(["model", "dataset", "_o"]).drop(columns="_o").reset_index(drop=True)


def plot_unique_answers(groups: Sequence[QuestionSamples], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({q.model for q in groups})
    max_n = max(len(q.preds) for q in groups)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        counts = Counter(get_unique_preds_count(q.preds) for q in groups if q.model == model)
        xs = list(range(0, max_n + 1))
        ax.bar([x + i * width - 0.4 + width / 2 for x in xs], [counts.get(x, 0) for x in xs], width=width, label=model)
    ax.set_xlabel("unique answers among the samples of a question")
    ax.set_ylabel("questions")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xticks(list(range(0, max_n + 1)))
    ax.set_title("How spread are the sampled answers? (unique numeric answers per question)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_vs_n(long_df, path: Path) -> Path:
    """One panel per model (and dataset), one line per strategy with its 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(long_df.groupby(["model", "dataset"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), dpi=120, sharey=True, squeeze=False)
    colors = dict(zip(STRATEGIES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (model, dataset) in zip(axes[0], panels):
        panel = long_df[(long_df["model"] == model) & (long_df["dataset"] == dataset)]
        for strategy in STRATEGIES:
            g = panel[panel["strategy"] == strategy].sort_values("n")
            if g.empty:
                continue
            ax.plot(g["n"], g["accuracy"], marker="o", color=colors[strategy], label=strategy)
            ax.fill_between(g["n"], g["ci_low"], g["ci_high"], color=colors[strategy], alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(panel["n"].unique()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("samples per question (n)")
        ax.set_title(f"{model}\n{dataset}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%), 95% bootstrap band")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle("Inference-time scaling: accuracy vs samples per question")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def failure_modes_text(groups: Sequence[QuestionSamples], n: int | None = None) -> str:
    out = []
    for q in sorted(groups, key=_inspection_order):
        maj_fail = check_majority_failure(q.preds, q.gold, n)
        bon_fail = check_bon_failure(q.preds, q.rewards, q.gold, n)
        if not (maj_fail or bon_fail):
            continue
        preds, rewards, responses = q.preds[:n], q.rewards[:n], q.responses[:n]
        dist = Counter(p if p is not None else "<none>" for p in preds).most_common()
        out.append("=" * 100)
        out.append(f"model: {q.model}   dataset: {q.dataset}   question_id: {q.question_id}")
        out.append(f"failed: {', '.join(s for s, f in (('majority', maj_fail), ('best-of-n', bon_fail)) if f)}")
        out.append(f"question: {q.question}")
        out.append(f"gold: {q.gold}   majority: {majority_vote(preds)}   best-of-n pick: {best_of_n(preds, rewards)}")
        out.append(f"unique answers: {get_unique_preds_count(preds)}   answers: " + ", ".join(f"{a} x{c}" for a, c in dist))
        for i, (p, r, text) in enumerate(zip(preds, rewards, responses)):
            mark = "correct" if p == q.gold else "wrong"
            out.append(f"--- sample {i}  pred={p}  reward={r:.4f}  {mark}")
            out.append(text.strip())
    if not out:
        return "No question where majority vote or Best-of-N failed although a correct sample existed.\n"
    return "\n".join(out) + "\n"


def _strategy_legend(softmax_temperature: float) -> str:
    return "\n".join(f"- `{s}`: {STRATEGY_MEANING[s]}" + (f" (T = {softmax_temperature:g})" if s == "softmax_vote" else "")
                     for s in STRATEGIES) + "\n"


def write_report(df, out_dir: str | Path, ns: Sequence[int] = (1, 2, 4, 8), softmax_temperature: float = 1.0,
                 bootstrap_resamples: int = 2000, seed: int = 0, max_subsets: int = MAX_SUBSETS) -> dict:
    """Tables 2 and 3, the paired differences, plots and failure traces into `out_dir` (a local folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if softmax_temperature <= 0:
        raise DataError(f"softmax temperature must be > 0, got {softmax_temperature}")
    groups = group_questions(df)
    num_samples = min(len(q.preds) for q in groups)
    too_large = [n for n in ns if n > num_samples]
    if too_large:
        raise DataError(f"n = {', '.join(map(str, too_large))} exceeds the {num_samples} samples per question in the "
                        f"samples file; pass --ns with values up to {num_samples}")
    per_question = per_question_scores(groups, ns, "subsets", softmax_temperature, max_subsets, seed)
    per_question_first = per_question_scores(groups, ns, "first_n", softmax_temperature)
    long_df = scaling_table(per_question, bootstrap_resamples, seed)
    first_long = scaling_table(per_question_first, bootstrap_resamples, seed)
    diffs = differences_table(per_question, bootstrap_resamples, seed)
    failures = failures_table(groups)
    subsets_note = (f"all size-n subsets of the {num_samples} samples" if all(
        math.comb(num_samples, n) <= max_subsets for n in ns) else
        f"all size-n subsets of the {num_samples} samples, or {max_subsets} seeded ones where there are more")
    ci = f"95% bootstrap CI over questions, {bootstrap_resamples} resamples, seed {seed}"
    legend = _strategy_legend(softmax_temperature)
    texts = {
        "table2_scaling.csv": scaling_wide(long_df).to_csv(index=False),
        "table2_scaling.md": f"Accuracy (%) [{ci}] at n samples per question, each strategy averaged over {subsets_note}\n\n"
                             + to_markdown(scaling_wide(long_df)) + "\n" + legend,
        "table2_scaling_long.csv": long_df.to_csv(index=False, float_format="%.4f"),
        "table2_first_n.csv": scaling_wide(first_long).to_csv(index=False),
        "table2_first_n.md": f"The course's definition, for comparison: accuracy (%) [{ci}] on the FIRST n samples only "
                             "(one draw per question; pass@n = any of them right)\n\n" + to_markdown(scaling_wide(first_long)) + "\n" + legend,
        "table2_first_n_long.csv": first_long.to_csv(index=False, float_format="%.4f"),
        "table2_differences.csv": diffs.to_csv(index=False, float_format="%.4f"),
        "table2_differences.md": f"Paired differences (percentage points) [{ci}, the same questions on both sides]\n\n"
                                 + (to_markdown(diffs) if len(diffs) else "(no pairs to compare)\n"),
        "table3_failures.csv": failures.to_csv(index=False, float_format="%.4f"),
        "table3_failures.md": "Failures given at least one correct sample, on all N samples (rates in %)\n\n" + to_markdown(failures),
        "failure_modes.txt": failure_modes_text(groups),
        "failures_to_inspect.csv": failures_to_inspect(groups).to_csv(index=False),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = out / name
        atomic_write_text(paths[name], text)
    paths["unique_answers_dist.png"] = plot_unique_answers(groups, out / "unique_answers_dist.png")
    paths["accuracy_vs_n.png"] = plot_accuracy_vs_n(long_df, out / "accuracy_vs_n.png")
    settings = {"ns": list(ns), "estimator": "mean over size-n subsets", "max_subsets": max_subsets,
                "softmax_temperature": softmax_temperature, "bootstrap_resamples": bootstrap_resamples, "seed": seed,
                "tie_break": "answer whose first sample has the lowest sample_idx; Best-of-N: lowest sample_idx"}
    return {"paths": {k: str(v) for k, v in paths.items()}, "scaling": long_df, "first_n": first_long,
            "differences": diffs, "failures": failures, "settings": settings}
