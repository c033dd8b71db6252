"""Answer selection over N samples of one question, and the course's failure checks.

Every function looks at the first `n` samples in `sample_idx` order (the course's definition);
`estimators` averages them over all size-n subsets for the tables. A prediction of None (no number
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


def _vote(preds: Sequence[Pred], weights: Sequence[float]) -> Pred:
    """Answer with the largest total weight; float sums equal up to rounding are ties -> first seen."""
    totals: "OrderedDict[str, float]" = OrderedDict()
    for p, w in zip(preds, weights):
        if p is not None:
            totals[p] = totals.get(p, 0.0) + w
    if not totals:
        return None
    best = max(totals.values())
    return next(answer for answer, w in totals.items() if math.isclose(w, best, rel_tol=1e-12))


def weighted_best_of_n(preds: Sequence[Pred], rewards: Sequence[float], n: Optional[int] = None) -> Pred:
    """Weighted Best-of-N (search-and-learn): the answer with the largest sum of its samples' rewards.

    Rewards are logits here; sigmoid maps them to (0, 1) first, as the PRM scores summed there are,
    so that a negative logit never counts against its answer."""
    preds, rewards = _first_n(preds, n), _first_n(rewards, n)
    return _vote(preds, [1.0 / (1.0 + math.exp(-r)) for r in rewards])


def softmax_vote(preds: Sequence[Pred], rewards: Sequence[float], n: Optional[int] = None, temperature: float = 1.0) -> Pred:
    """Vote where each sample counts softmax(reward / temperature). Reward logits have no fixed scale,
    so the temperature is part of the strategy and is recorded with every table that uses it."""
    preds, rewards = _first_n(preds, n), _first_n(rewards, n)
    if not preds:
        return None
    top = max(rewards)
    return _vote(preds, [math.exp((r - top) / temperature) for r in rewards])


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
