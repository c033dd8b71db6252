"""Findings: what the tables say, in sentences derived from their numbers and intervals.

Every sentence is computed from a table the jobs wrote into the report folder (never free text), so
it can be rebuilt at any time and never disagrees with them:

- per test set, whether SFT changed greedy accuracy (the paired 95% interval of SFT - base excludes 0
  or not) and how the gains on the three test sets compare (table1_differences.csv);
- per model and n, Best-of-N against majority vote with their paired difference (table2_differences.csv);
- how often each fails although a right sample exists (table3_failures.csv);
- per model, the failures to read by hand, questions with exactly three unique answers first
  (failures_to_inspect.csv), as the course's manual analysis asks.

On a tiny-model run the first sentence says that none of this is a finding about real models.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

TINY_CAVEAT = ("These sentences are computed from this run's tables. This run used the embedded tiny models, so "
               "nothing here is a finding about real models: it shows what the study would conclude from them.")
INSPECT_PER_STRATEGY = 3  # the course asks for 3 majority and 3 Best-of-N failures per model
STRATEGY_WORDS = {"majority": "majority vote", "best_of_n": "Best-of-N", "weighted_best_of_n": "weighted Best-of-N"}


@dataclass
class Section:
    heading: str
    sentences: list[str] = field(default_factory=list)


def _rows(folder: Path, name: str) -> list[dict]:
    path = folder / name
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _points(x: float) -> str:
    return f"{x:+.1f} points"


def verdict(difference: float, low: float, high: float, better: str, worse: str, same: str) -> str:
    """What a paired interval allows one to say: a change only when it excludes 0."""
    if low > 0:
        return better
    if high < 0:
        return worse
    return same


def _interval(row: dict) -> tuple[float, float, float]:
    return float(row["difference"]), float(row["ci_low"]), float(row["ci_high"])


def sft_findings(rows: list[dict]) -> list[str]:
    out = []
    by_comparison: dict[str, list[dict]] = {}
    for row in rows:
        by_comparison.setdefault(row["comparison"], []).append(row)
    for comparison, items in by_comparison.items():
        sft, _, base = comparison.partition(" - ")
        for row in items:
            d, low, high = _interval(row)
            said = verdict(d, low, high, f"SFT raised accuracy (the interval excludes 0)",
                           f"SFT lowered accuracy (the interval excludes 0)",
                           "no change is shown (the interval includes 0)")
            out.append(f"{row['test_set']}: {sft} vs {base} {_points(d)} [{low:.1f}, {high:.1f}] on "
                       f"{row['questions']} questions: {said}.")
        if len(items) > 1:
            ranked = sorted(items, key=lambda r: -float(r["difference"]))
            order = ", then ".join(f"{r['test_set']} ({_points(float(r['difference']))})" for r in ranked)
            overlap = all(float(a["ci_low"]) <= float(b["ci_high"]) and float(b["ci_low"]) <= float(a["ci_high"])
                          for a in items for b in items)
            out.append(f"{sft}'s gains, largest first: {order}; "
                       + ("their intervals overlap, so these test sets do not tell the gains apart."
                          if overlap else "not all intervals overlap: the gains differ between test sets."))
    return out


def selection_findings(rows: list[dict]) -> list[str]:
    """Best-of-N minus majority per model, dataset and n (the within-model rows of table 2's differences)."""
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        model, sep, what = row["comparison"].partition(": ")
        if sep and what == "best_of_n - majority" and " - " not in model:
            groups.setdefault((model, row["dataset"]), []).append(row)
    for (model, dataset), items in groups.items():
        parts = []
        for row in sorted(items, key=lambda r: int(r["n"])):
            d, low, high = _interval(row)
            said = verdict(d, low, high, "Best-of-N better", "majority better", "no difference shown")
            parts.append(f"n={row['n']}: {_points(d)} [{low:.1f}, {high:.1f}], {said}")
        out.append(f"{model} on {dataset}, Best-of-N minus majority vote: " + "; ".join(parts) + ".")
    return out


def failure_findings(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        k = int(row["with_a_correct_sample"])
        if k == 0:
            out.append(f"{row['model']} on {row['dataset']}: no question has a right answer among its {row['n']} "
                       "samples, so neither strategy can fail in this sense.")
            continue
        out.append(f"{row['model']} on {row['dataset']}: of the {k} of {row['questions']} questions with a right "
                   f"answer among {row['n']} samples, majority vote picked a wrong one for {row['majority_failures']} "
                   f"({float(row['majority_failure_rate']):.0f}%) and Best-of-N for {row['best_of_n_failures']} "
                   f"({float(row['best_of_n_failure_rate']):.0f}%).")
    return out


def inspect_findings(rows: list[dict]) -> list[str]:
    """Per model, the first few failures of each strategy in the file's order (3 unique answers first)."""
    out = []
    per_model: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        per_model.setdefault(row["model"], {}).setdefault(row["strategy"], []).append(row)
    for model, strategies in per_model.items():
        parts = []
        for strategy in ("majority", "best_of_n"):
            picked = strategies.get(strategy, [])[:INSPECT_PER_STRATEGY]
            if picked:
                parts.append(f"{STRATEGY_WORDS[strategy]}: " + ", ".join(
                    f"{r['question_id']} ({r['unique_answers']} unique answers; gold {r['gold']}, picked {r['picked']})"
                    for r in picked))
        if parts:
            out.append(f"{model}, failures to read by hand (questions with exactly 3 unique answers first; traces "
                       "in failure_modes.txt): " + "; ".join(parts) + ".")
    return out


def findings(folder: str | Path, tiny: bool) -> list[Section]:
    """The findings of a report folder, section by section; sections without their table are left out."""
    folder = Path(folder)
    sections = [
        Section("Does SFT change greedy accuracy?", sft_findings(_rows(folder, "table1_differences.csv"))),
        Section("Majority vote or Best-of-N?", selection_findings(_rows(folder, "table2_differences.csv"))),
        Section("Failures although a sample was right", failure_findings(_rows(folder, "table3_failures.csv"))),
        Section("Failures to look at", inspect_findings(_rows(folder, "failures_to_inspect.csv"))),
    ]
    sections = [s for s in sections if s.sentences]
    if sections and tiny:
        sections.insert(0, Section("What these findings are", [TINY_CAVEAT]))
    return sections


def findings_markdown(sections: list[Section]) -> str:
    lines = ["## Findings", ""]
    for section in sections:
        lines += [f"### {section.heading}", ""] + [f"- {s}" for s in section.sentences] + [""]
    return "\n".join(lines) + "\n" if sections else ""
