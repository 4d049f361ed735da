"""Exact segmentation of the paper's objective: equal to brute force, never worse than the release's one-state-per-cell
DP (and sometimes better), constraints respected."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento.core.errors import MementoError
from memento.data.segment import objective, segment


def brute_force(lengths, scores, lam, min_tokens, max_tokens=None):
    n = len(lengths)
    best = None
    for r in range(n):
        for cuts in itertools.combinations(range(n - 1), r):
            edges = [0, *(b + 1 for b in cuts), n]
            blocks = [sum(lengths[a:b]) for a, b in itertools.pairwise(edges)]
            sizes = [b - a for a, b in itertools.pairwise(edges)]  # units per block
            too_big = max_tokens and any(t > max_tokens and s > 1 for t, s in zip(blocks, sizes, strict=True))
            if (r and min(blocks) < min_tokens) or too_big:
                continue
            value = objective(lengths, scores, list(cuts), lam)
            if best is None or value > best + 1e-12:
                best = value
    return best


def release_dp(lengths, scores, lam, min_tokens):
    """The release's approximate DP, re-implemented from its description (../notes: one state per (units consumed,
    blocks) cell holding the best partial objective and its running sums; ties to the smaller start, then to fewer
    blocks; one block when nothing is feasible). Returns the exact objective of the segmentation it picks."""
    n = len(lengths)
    dp = {(0, 0): (0.0, 0.0, 0.0, 0.0, -1)}  # (objective, score sum, size sum, size^2 sum, start of last block)
    for i in range(1, n + 1):
        for k in range(1, i + 1):
            best = None
            for j in range(i):
                if (j, k - 1) not in dp:
                    continue
                size = sum(lengths[j:i])
                if size < min_tokens:
                    continue
                _, s, a, q, _ = dp[j, k - 1]
                s, a, q = s + (scores[j - 1] if j else 0.0), a + size, q + size * size
                mean = a / k
                value = s / k - lam * math.sqrt(max(q / k - mean * mean, 0.0)) / mean
                if best is None or value > best[0]:
                    best = (value, s, a, q, j)
            if best is not None:
                dp[i, k] = best
    ks = [k for k in range(1, n + 1) if (n, k) in dp]
    if not ks:
        return 0.0
    k = max(ks, key=lambda k: (dp[n, k][0], -k))
    cuts, i = [], n
    while k > 0:
        j = dp[i, k][4]
        if j:
            cuts.append(j - 1)
        i, k = j, k - 1
    return objective(lengths, scores, sorted(cuts), lam)


@settings(max_examples=300, deadline=None)
@given(
    data=st.integers(1, 10).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(1, 120), min_size=n, max_size=n),
            st.lists(st.integers(0, 6).map(lambda x: x / 2), min_size=n - 1, max_size=n - 1),
        )
    ),
    min_tokens=st.integers(1, 200),
    max_tokens=st.one_of(st.none(), st.integers(60, 400)),
)
def test_exact_equals_brute_force(data, min_tokens, max_tokens):
    lengths, scores = data
    expected = brute_force(lengths, scores, 0.5, min_tokens, max_tokens)
    if expected is None:
        with pytest.raises(MementoError, match="no segmentation"):
            segment(lengths, scores, 0.5, min_tokens, max_tokens)
        return
    got = segment(lengths, scores, 0.5, min_tokens, max_tokens)
    assert got.objective == pytest.approx(expected, abs=1e-9)
    assert objective(lengths, scores, got.cuts) == pytest.approx(expected, abs=1e-9)
    sizes = [sum(lengths[a:b]) for a, b in got.blocks]
    if len(sizes) > 1:
        assert min(sizes) >= min_tokens
    assert max_tokens is None or all(s <= max_tokens or b - a == 1 for s, (a, b) in zip(sizes, got.blocks, strict=True))
    assert [a for a, _ in got.blocks][1:] == [b + 1 for b in got.cuts]


def test_the_releases_one_state_per_cell_dp_can_miss_the_optimum():
    lengths, scores = [33, 86, 9, 19, 89, 13, 101, 85, 85], [1.0, 2.0, 2.0, 0.0, 1.5, 1.0, 1.0, 2.0]
    exact = segment(lengths, scores, 0.5, 1)
    assert exact.cuts == [1, 4, 6, 7] and exact.objective == pytest.approx(1.2250247, abs=1e-6)
    assert release_dp(lengths, scores, 0.5, 1) < exact.objective - 0.01


@settings(max_examples=150, deadline=None)
@given(
    data=st.integers(2, 9).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(5, 120), min_size=n, max_size=n),
            st.lists(st.integers(0, 6).map(lambda x: x / 2), min_size=n - 1, max_size=n - 1),
        )
    ),
    min_tokens=st.sampled_from([1, 50, 100, 200]),
)
def test_never_worse_than_the_releases_dp(data, min_tokens):
    lengths, scores = data
    assert segment(lengths, scores, 0.5, min_tokens).objective >= release_dp(lengths, scores, 0.5, min_tokens) - 1e-9


def test_the_objective_divides_by_blocks_and_rewards_good_cuts():
    """S / K: two good cuts beat one (the mean cut score, S / (K - 1), would tie them and pick one by CV)."""
    lengths, scores = [300] * 3, [3.0, 3.0]
    assert objective(lengths, scores, [0]) == pytest.approx(3 / 2 - 0.5 * (150 / 450))  # CV: population std / mean
    assert objective(lengths, scores, [0, 1]) == pytest.approx(2.0)
    assert segment(lengths, scores, 0.5, 200).cuts == [0, 1]


def test_bad_scores_and_single_block():
    with pytest.raises(MementoError, match="3 units need 2 boundary scores"):
        segment([1, 2, 3], [1.0])
    with pytest.raises(MementoError, match="multiples of 1/2"):
        segment([300, 300], [0.3])
    assert segment([50, 50], [3.0], min_tokens=200).blocks == [(0, 2)]  # too short to split


def test_an_oversized_unit_stands_alone():
    got = segment([300, 2000, 300, 250], [3.0, 3.0, 1.0], min_tokens=200, max_tokens=1536)
    assert (1, 2) in got.blocks
    assert segment([5000], [], max_tokens=1536).blocks == [(0, 1)]
