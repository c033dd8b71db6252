"""Answer selection over N samples of one question, and the course's failure checks.

Every function looks at the first `n` samples in `sample_idx` order. A prediction of None (no number
in the response) never wins a vote, but it can be the Best-of-N pick, which then is simply wrong.

Tie-breaking, everywhere: among answers (or samples) tied on the score, the one that appears first,
i.e. with the lowest `sample_idx`, wins. It is deterministic and does not favour any answer value.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence

Pred = Optional[str]


def _first_n(values: Sequence, n: Optional[int]) -> list:
    return list(values if n is None else values[:n])


def majority_vote(preds: Sequence[Pred], n: Optional[int] = None) -> Pred:
    """Most frequent non-None answer among the first n; ties -> the answer seen first."""
    counts: "OrderedDict[str, int]" = OrderedDict()
    for p in _first_n(preds, n):
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(answer for answer, c in counts.items() if c == best)  # insertion order = first seen


def best_of_n(preds: Sequence[Pred], rewards: Sequence[float], n: Optional[int] = None) -> Pred:
    """Answer of the highest-reward sample among the first n; ties -> the lower sample_idx."""
    preds, rewards = _first_n(preds, n), _first_n(rewards, n)
    if not preds:
        return None
    best = max(range(len(preds)), key=lambda i: (rewards[i], -i))
    return preds[best]


def weighted_majority_vote(preds: Sequence[Pred], rewards: Sequence[float], n: Optional[int] = None) -> Pred:
    """Vote where each sample counts softmax(reward) (rewards are logits); ties -> first seen."""
    preds, rewards = _first_n(preds, n), _first_n(rewards, n)
    if not preds:
        return None
    top = max(rewards)
    weights: "OrderedDict[str, float]" = OrderedDict()
    for p, r in zip(preds, rewards):
        if p is not None:
            weights[p] = weights.get(p, 0.0) + math.exp(r - top)
    if not weights:
        return None
    best = max(weights.values())
    return next(answer for answer, w in weights.items() if math.isclose(w, best, rel_tol=1e-12) or w == best)


def get_unique_preds_count(preds: Sequence[Pred], n: Optional[int] = None) -> int:
    """Distinct non-None answers among the first n samples."""
    return len({p for p in _first_n(preds, n) if p is not None})


def any_correct(preds: Sequence[Pred], gold: str, n: Optional[int] = None) -> bool:
    return any(p == gold for p in _first_n(preds, n))


def check_majority_failure(preds: Sequence[Pred], gold: str, n: Optional[int] = None) -> bool:
    """Majority vote is wrong although at least one of the first n samples is right."""
    return any_correct(preds, gold, n) and majority_vote(preds, n) != gold


def check_bon_failure(preds: Sequence[Pred], rewards: Sequence[float], gold: str, n: Optional[int] = None) -> bool:
    """Best-of-N is wrong although at least one of the first n samples is right."""
    return any_correct(preds, gold, n) and best_of_n(preds, rewards, n) != gold


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def wilson_interval(successes: float, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (good at 0%, 100% and small n)."""
    if trials == 0:
        return (0.0, 0.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
