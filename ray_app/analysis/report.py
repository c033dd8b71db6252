"""From a samples file to Tables 2-3, plots and failure-mode traces.

Samples schema (one row per generated answer; Parquet or JSONL):

    model, dataset, question_id, sample_idx, question, response, pred, gold, correct, reward,
    num_tokens, finish_reason

`pred` and `gold` are normalised numbers as strings (`pred` null when no number was found),
`reward` the reward model's score of (question, response).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
from ray_app.utils.io import DataError, atomic_write_text

SAMPLE_COLUMNS = [
    "model", "dataset", "question_id", "sample_idx", "question", "response",
    "pred", "gold", "correct", "reward", "num_tokens", "finish_reason",
]
STRATEGIES = ("majority", "best_of_n", "weighted_majority", "pass@n")


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


def _pick(strategy: str, q: QuestionSamples, n: int):
    if strategy == "majority":
        return majority_vote(q.preds, n)
    if strategy == "best_of_n":
        return best_of_n(q.preds, q.rewards, n)
    if strategy == "weighted_majority":
        return weighted_majority_vote(q.preds, q.rewards, n)
    raise ValueError(strategy)


def scaling_table(groups: Sequence[QuestionSamples], ns: Sequence[int]):
    """Long table: model, dataset, strategy, n, accuracy (%), 95% CI, correct, questions."""
    import pandas as pd

    rows = []
    keys = sorted({(q.model, q.dataset) for q in groups})
    for model, dataset in keys:
        qs = [q for q in groups if (q.model, q.dataset) == (model, dataset)]
        num_samples = min(len(q.preds) for q in qs)
        for strategy in STRATEGIES:
            for n in [n for n in ns if n <= num_samples]:
                if strategy == "pass@n":
                    # Unbiased estimator from all available samples, averaged over questions.
                    score = sum(pass_at_k(len(q.preds), sum(p == q.gold for p in q.preds), n) for q in qs)
                else:
                    score = sum(_pick(strategy, q, n) == q.gold for q in qs)
                low, high = wilson_interval(score, len(qs))  # pass@n: a mean of probabilities
                rows.append({"model": model, "dataset": dataset, "strategy": strategy, "n": n,
                             "accuracy": 100 * score / len(qs), "ci_low": 100 * low, "ci_high": 100 * high,
                             "correct": score, "questions": len(qs)})
    return pd.DataFrame(rows)


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
    """One panel per model (and dataset), one line per strategy with its 95% Wilson band."""
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
    axes[0][0].set_ylabel("accuracy (%), 95% Wilson band")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle("Inference-time scaling: accuracy vs samples per question")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def failure_modes_text(groups: Sequence[QuestionSamples], n: int | None = None) -> str:
    out = []
    for q in groups:
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
        out.append("answers: " + ", ".join(f"{a} x{c}" for a, c in dist))
        for i, (p, r, text) in enumerate(zip(preds, rewards, responses)):
            mark = "correct" if p == q.gold else "wrong"
            out.append(f"--- sample {i}  pred={p}  reward={r:.4f}  {mark}")
            out.append(text.strip())
    if not out:
        return "No question where majority vote or Best-of-N failed although a correct sample existed.\n"
    return "\n".join(out) + "\n"


def write_report(df, out_dir: str | Path, ns: Sequence[int] = (1, 2, 4, 8)) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_questions(df)
    long_df = scaling_table(groups, ns)
    wide = scaling_wide(long_df)
    failures = failures_table(groups)
    paths = {
        "table2_scaling.csv": out / "table2_scaling.csv",
        "table2_scaling.md": out / "table2_scaling.md",
        "table2_scaling_long.csv": out / "table2_scaling_long.csv",
        "table3_failures.csv": out / "table3_failures.csv",
        "table3_failures.md": out / "table3_failures.md",
        "failure_modes.txt": out / "failure_modes.txt",
    }
    atomic_write_text(paths["table2_scaling.csv"], wide.to_csv(index=False))
    atomic_write_text(paths["table2_scaling.md"], "Accuracy (%) [95% Wilson CI] by strategy and samples per question n\n\n" + to_markdown(wide))
    atomic_write_text(paths["table2_scaling_long.csv"], long_df.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["table3_failures.csv"], failures.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["table3_failures.md"], "Failures given at least one correct sample (rates in %)\n\n" + to_markdown(failures))
    atomic_write_text(paths["failure_modes.txt"], failure_modes_text(groups))
    paths["unique_answers_dist.png"] = plot_unique_answers(groups, out / "unique_answers_dist.png")
    paths["accuracy_vs_n.png"] = plot_accuracy_vs_n(long_df, out / "accuracy_vs_n.png")
    return {"paths": {k: str(v) for k, v in paths.items()}, "scaling": long_df, "failures": failures}
