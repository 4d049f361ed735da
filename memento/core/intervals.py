"""95% intervals for accuracies and their differences (what the demo and `memento eval` report).

- One proportion: the Wilson score interval (does not collapse at 0% or 100%).
- A mean over problems of per-problem scores (pass@1 over k samples): the normal interval, problems being the sample.
- Two models on the same problems: a paired difference. While every per-problem score is 0 or 1 (one sample each,
  or k samples that all agree) the Agresti-Min interval (the paired 2x2 table with 0.5 added to each cell, so it does
  not collapse to a point when no problem is solved by only one of the two); else the normal interval of the
  per-problem differences.
"""

from __future__ import annotations

import math
from typing import NamedTuple

Z95 = 1.959964


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def standard_error(scores: list[float]) -> float | None:
    """The standard error of the mean of `scores` (sample standard deviation / sqrt(n)); None for fewer than two."""
    n = len(scores)
    if n < 2:
        return None
    m = sum(scores) / n
    return math.sqrt(sum((s - m) ** 2 for s in scores) / (n - 1) / n)


def mean_interval(scores: list[float], low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
    """95% normal interval of the mean of `scores`, clipped to [low, high] (the whole range for fewer than two)."""
    se = standard_error(scores)
    if se is None:
        return (low, high)
    m = sum(scores) / len(scores)
    return (max(low, m - Z95 * se), min(high, m + Z95 * se))


class Difference(NamedTuple):
    """a - b on the same problems: accuracy difference and its 95% interval (paired)."""

    delta: float
    ci: tuple[float, float]
    only_a: int  # problems a scores higher on
    only_b: int


def paired_difference(a: list[bool], b: list[bool]) -> Difference:
    """Agresti-Min interval of the difference of two paired proportions (clipped to [-1, 1])."""
    n = len(a)
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    b_, c_, n_ = only_a + 0.5, only_b + 0.5, n + 2
    centre = (b_ - c_) / n_
    se = math.sqrt(b_ + c_ - (b_ - c_) ** 2 / n_) / n_
    ci = (max(-1.0, centre - Z95 * se), min(1.0, centre + Z95 * se))
    return Difference((only_a - only_b) / n, ci, only_a, only_b)


def paired_scores(a: list[float], b: list[float]) -> Difference:
    """a - b for per-problem scores in [0, 1] (shares of correct samples): Agresti-Min when every score is 0 or 1,
    else the normal interval of the per-problem differences."""
    if not a:
        raise ValueError("a paired difference needs at least one problem")
    if all(s in (0, 1) for s in (*a, *b)):
        return paired_difference([bool(s) for s in a], [bool(s) for s in b])
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return Difference(
        sum(diffs) / len(diffs), mean_interval(diffs, -1.0, 1.0), sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    )
