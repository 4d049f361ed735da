"""Exact segmentation: choose the cuts that maximise (sum of cut scores) / blocks - lambda * CV(block token lengths).

This is the paper's objective (Sec. 3; the release's `segment.py`): with K blocks the K - 1 cut scores are summed
and divided by K, the number of *blocks* (the first block adds no score), and CV is the population standard
deviation of the blocks' token lengths over their mean; one block scores 0. Dividing by K rather than K - 1 makes
more, well-placed cuts pay: the mean cut score alone is almost always best with 2 blocks.

The objective is not additive over blocks, so a DP that keeps one best state per (position, blocks) cell is only
approximate (the release does that). It becomes exact once the state carries what the objective needs: with k blocks
of total length T, the mean length is T/k, so

    J = S / k - lambda * sqrt(k * Q / T^2 - 1)        S = sum of cut scores, Q = sum of squared lengths

and for fixed k and S the best segmentation is the one with the least Q. Scores are small multiples of
1/`resolution` (0-3 in halves when two scoring passes are averaged), so S takes few values and the DP over
(k, end unit, S) -> min Q, with exact integer Q, finds the optimum. The inner loop runs in numba
(benchmarks/segmentation.py has the times).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from memento.core.errors import MementoError

INF = np.iinfo(np.int64).max // 4


class Segmentation(NamedTuple):
    cuts: list[int]  # boundary indices: cut b ends a block after unit b (0-based)
    objective: float
    blocks: list[tuple[int, int]]  # unit ranges [start, end)


def objective(lengths, scores, cuts, lam: float = 0.5) -> float:
    """The segmentation objective, computed directly (the reference the DP is tested against)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if not cuts:
        return 0.0
    edges = [0, *(b + 1 for b in cuts), len(lengths)]
    blocks = np.array([lengths[a:b].sum() for a, b in itertools.pairwise(edges)])
    return float(sum(scores[b] for b in cuts) / len(blocks) - lam * blocks.std() / blocks.mean())


def _layer_kernel():
    from numba import njit

    @njit(cache=True)
    def layer(q_prev, c, sc, min_t, max_t, q, parent):
        # q_prev: (n + 1, w_prev) least Q of k-1 blocks ending after unit i with score sum s.
        # A state (s, Q) is dominated by (s' > s, Q' <= Q) at the same unit: every extension adds the same to
        # both, so only each unit's Pareto frontier is extended.
        n = c.shape[0] - 1
        w_prev = q_prev.shape[1]
        start = np.zeros(n + 2, dtype=np.int64)
        fs = np.empty((n + 1) * w_prev, dtype=np.int64)
        fq = np.empty((n + 1) * w_prev, dtype=np.int64)
        m = 0
        for j in range(n + 1):
            start[j] = m
            low = INF
            for s in range(w_prev - 1, -1, -1):
                if q_prev[j, s] < low:
                    low = q_prev[j, s]
                    fs[m] = s
                    fq[m] = low
                    m += 1
        start[n + 1] = m
        for i in range(1, n + 1):
            for j in range(i - 1, 0, -1):
                length = c[i] - c[j]
                if length < min_t:
                    continue
                if length > max_t and j < i - 1:  # one oversized unit may stand alone; never more
                    break
                add = length * length
                v = sc[j]
                for t in range(start[j], start[j + 1]):
                    s = fs[t] + v
                    if fq[t] + add < q[i, s]:
                        q[i, s] = fq[t] + add
                        parent[i, s] = j

    return layer


_LAYER = None


def segment(
    lengths, scores, lam: float = 0.5, min_tokens: int = 200, max_tokens: int | None = None, resolution: int = 2
) -> Segmentation:
    """The exact optimum. `lengths`: tokens per unit (n,); `scores`: boundary scores (n - 1,), multiples of
    1/`resolution`. Every block gets >= `min_tokens` and <= `max_tokens`, except that a single unit longer than
    `max_tokens` (a long code listing) is a block of its own; one block when nothing fits."""
    global _LAYER
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        raise MementoError("cannot segment an empty trace")
    if len(scores) != n - 1:
        raise MementoError(f"{n} units need {n - 1} boundary scores, got {len(scores)}")
    scaled = np.rint(np.asarray(scores, dtype=np.float64) * resolution).astype(np.int64)
    if len(scores) and (np.abs(scaled - np.asarray(scores) * resolution).max() > 1e-6 or scaled.min() < 0):
        raise MementoError(f"boundary scores must be non-negative multiples of 1/{resolution}")
    c = np.concatenate([[0], np.cumsum(lengths)])
    total = int(c[-1])
    max_t = total if max_tokens is None else max_tokens
    sc = np.concatenate([[0], scaled, [0]])  # sc[j]: score of the cut after unit j (1-based)
    top = int(scaled.max(initial=0))
    k_max = min(n, max(1, total // min_tokens))
    if _LAYER is None:
        _LAYER = _layer_kernel()

    best = Segmentation([], 0.0, [(0, n)]) if total <= max_t or n == 1 else None
    q = np.full((n + 1, 1), INF, dtype=np.int64)
    ok = (c >= min_tokens) & ((c <= max_t) | (np.arange(n + 1) == 1))
    q[ok, 0] = c[ok] ** 2
    parents = []
    # k blocks score at most (sum of the k - 1 highest scores) / k; no k' >= k can beat `best` once the largest
    # such bound over k' >= k does not.
    reach = np.cumsum(np.sort(scaled)[::-1])[: max(k_max - 1, 0)] / resolution / np.arange(2, k_max + 1)
    bound = np.maximum.accumulate(reach[::-1])[::-1]
    for k in range(2, k_max + 1):
        if best is not None and bound[k - 2] <= best.objective + 1e-12:
            break
        width = top * (k - 1) + 1
        q_prev, q = q, np.full((n + 1, width), INF, dtype=np.int64)
        parent = np.full((n + 1, width), -1, dtype=np.int16 if n < 2**15 else np.int32)
        _LAYER(q_prev, c, sc, min_tokens, max_t, q, parent)
        parents.append(parent)
        for s in np.flatnonzero(q[n] < INF):
            value = s / resolution / k - lam * math.sqrt(max(k * float(q[n, s]) / total**2 - 1, 0.0))
            if best is None or value > best.objective + 1e-12:
                best = _backtrack(parents, sc, n, int(s), value)
        if not (q < INF).any():
            break
    if best is None:
        raise MementoError(f"no segmentation puts every block within [{min_tokens}, {max_t}] tokens")
    return best


def _backtrack(parents, sc, n: int, s: int, value: float) -> Segmentation:
    cuts, i = [], n
    for parent in reversed(parents):
        j = int(parent[i, s])
        cuts.append(j - 1)  # the block before ends after unit j (1-based) = boundary j - 1 (0-based)
        s -= int(sc[j])
        i = j
    cuts.reverse()
    edges = [0, *(b + 1 for b in cuts), n]
    return Segmentation(cuts, value, list(itertools.pairwise(edges)))
