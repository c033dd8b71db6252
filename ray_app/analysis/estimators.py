"""Accuracy at n samples, one estimator for every strategy, and bootstrap intervals over questions.

A question has N samples. "Accuracy at n" of a selection strategy is the mean over all size-n subsets
of the N samples of "the strategy picks the gold answer from that subset" (the subsets are enumerated;
only when there are more than `max_subsets` of them, a seeded sample of that many is drawn). With
n = N it is the strategy on all samples; for pass@n it is exactly the unbiased pass@k estimator. So at
n = 1 every strategy equals the mean single-sample accuracy, and pass@n bounds every strategy from
above at every n: the columns of Table 2 differ only where the strategies do.

The course's definition (the first n samples, one draw) stays in `first_n_scores` for comparison.

Intervals: a percentile bootstrap over questions (questions are the independent unit; a question's
samples are not). Differences between two cells are bootstrapped paired, with the same resampled
questions for both, which is what makes a difference of a few points on 100 questions readable.

Tie rules (as in `strategies`): among answers tied on the vote, the one whose first sample has the
lowest sample_idx wins; among samples tied on the reward, the lowest sample_idx wins.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Optional, Sequence

import numpy as np

from ray_app.analysis.strategies import (
    best_of_n,
    majority_vote,
    pass_at_k,
    softmax_vote,
    weighted_best_of_n,
)

SELECTION_STRATEGIES = ("majority", "best_of_n", "weighted_best_of_n", "softmax_vote")
STRATEGIES = SELECTION_STRATEGIES + ("pass@n",)
STRATEGY_MEANING = {
    "majority": "most frequent answer",
    "best_of_n": "answer of the highest-reward sample",
    "weighted_best_of_n": "answer with the largest sum of sigmoid(reward) over its samples",
    "softmax_vote": "answer with the largest sum of exp(reward / T) over its samples",
    "pass@n": "some sample is right (coverage; an oracle verifier)",
}
MAX_SUBSETS = 4096


def stable_seed(*parts) -> int:
    """A 64-bit seed from any labels: the same labels give the same stream on every machine."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def subsets(num_samples: int, n: int, max_subsets: int = MAX_SUBSETS, seed: int = 0) -> np.ndarray:
    """Size-n subsets of range(num_samples) as an (m, n) array, each row ascending: all of them when
    there are at most `max_subsets`, else `max_subsets` seeded uniform draws."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"n must be between 1 and the {num_samples} samples per question, got {n}")
    if math.comb(num_samples, n) <= max_subsets:
        return np.array(list(itertools.combinations(range(num_samples), n)), dtype=np.int64).reshape(-1, n)
    rng = np.random.default_rng(seed)
    return np.sort(np.argsort(rng.random((max_subsets, num_samples)), axis=1)[:, :n], axis=1)


def _pick_answer(score: np.ndarray, present: np.ndarray, first: np.ndarray, num_samples: int) -> np.ndarray:
    """Per subset, the answer with the highest score; ties -> the lowest first sample_idx; -1 when the
    subset has no answer at all. Float sums tied up to rounding count as tied."""
    score = np.where(present, score, -np.inf)
    best = score.max(axis=1, keepdims=True)
    tied = present & np.isclose(score, best, rtol=1e-12, atol=0.0)
    pick = np.argmin(np.where(tied, first, num_samples + 1), axis=1)
    return np.where(present.any(axis=1), pick, -1)


def subset_scores(
    preds: Sequence[Optional[str]],
    rewards: Sequence[float],
    gold: str,
    ns: Sequence[int],
    softmax_temperature: float = 1.0,
    max_subsets: int = MAX_SUBSETS,
    seed: int = 0,
) -> dict[tuple[str, int], float]:
    """{(strategy, n): expected correctness over size-n subsets} for one question."""
    num_samples = len(preds)
    answers = list(dict.fromkeys(p for p in preds if p is not None))
    ids = np.array([answers.index(p) if p is not None else -1 for p in preds])
    gold_id = answers.index(gold) if gold in answers else -2  # -2 matches no pick, not even "no answer"
    rewards = np.asarray(rewards, dtype=np.float64)
    sig = 1.0 / (1.0 + np.exp(-rewards))
    soft = np.exp((rewards - rewards.max()) / softmax_temperature)  # the common factor cancels in the vote
    k = np.arange(len(answers))
    out: dict[tuple[str, int], float] = {}
    for n in ns:
        if not answers:  # no sample has a number: every pick is wrong, and so is pass@n
            out.update({(strategy, n): 0.0 for strategy in STRATEGIES})
            continue
        s = subsets(num_samples, n, max_subsets, stable_seed(seed, n))
        a = ids[s]  # (m, n) answer ids of each subset's samples
        onehot = a[:, :, None] == k[None, None, :]  # (m, n, K)
        present = onehot.any(axis=1)
        first = np.where(onehot, s[:, :, None], num_samples).min(axis=1)  # lowest sample_idx per answer
        picks = {
            "majority": _pick_answer(onehot.sum(axis=1).astype(float), present, first, num_samples),
            "weighted_best_of_n": _pick_answer((onehot * sig[s][:, :, None]).sum(axis=1), present, first, num_samples),
            "softmax_vote": _pick_answer((onehot * soft[s][:, :, None]).sum(axis=1), present, first, num_samples),
            # argmax returns the first maximum, i.e. the lowest sample_idx of the ascending row.
            "best_of_n": a[np.arange(len(s)), np.argmax(rewards[s], axis=1)],
        }
        for strategy, pick in picks.items():
            out[(strategy, n)] = float(np.mean(pick == gold_id))
        out[("pass@n", n)] = pass_at_k(num_samples, sum(p == gold for p in preds), n)
    return out


def first_n_scores(preds, rewards, gold: str, ns: Sequence[int], softmax_temperature: float = 1.0) -> dict[tuple[str, int], float]:
    """The course's definition: each strategy on the first n samples only; pass@n = any of them right."""
    out = {}
    for n in ns:
        out[("majority", n)] = float(majority_vote(preds, n) == gold)
        out[("best_of_n", n)] = float(best_of_n(preds, rewards, n) == gold)
        out[("weighted_best_of_n", n)] = float(weighted_best_of_n(preds, rewards, n) == gold)
        out[("softmax_vote", n)] = float(softmax_vote(preds, rewards, n, softmax_temperature) == gold)
        out[("pass@n", n)] = float(any(p == gold for p in preds[:n]))
    return out


# ----------------------------------------------------------------------------------------------
# Bootstrap over questions
# ----------------------------------------------------------------------------------------------


def bootstrap_indices(num_questions: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_questions) question indices drawn with replacement; seeded."""
    return np.random.default_rng(seed).integers(0, num_questions, size=(resamples, num_questions))


def bootstrap_interval(scores: np.ndarray, indices: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over questions. `scores`: (questions,) or (questions, cells)."""
    means = np.asarray(scores, dtype=np.float64)[indices].mean(axis=1)
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


def paired_difference(a: Sequence[float], b: Sequence[float], indices: np.ndarray, level: float = 0.95) -> dict:
    """Mean of a - b over the same questions (aligned), with a paired bootstrap interval."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_interval(diff, indices, level)
    return {"difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high)}


def wilson_interval(successes: float, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion of independent trials (Table 1: one greedy answer per
    question). Unlike a percentile bootstrap it stays informative at 0% and 100%, where tiny models sit."""
    if trials == 0:
        return (0.0, 0.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def sft_base_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(sft, base) label pairs to compare: 'small-sft' with 'small-base', 'sft-x' with 'base-x', 'sft' with 'base'."""
    present = set(labels)
    return [(label, label.replace("sft", "base")) for label in labels
            if "sft" in label and label.replace("sft", "base") in present]
