"""Exact segmentation: equal to brute force, better than a one-state-per-cell DP, constraints respected."""

from __future__ import annotations

import itertools
import math

import numpy as np
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


def one_state_per_position(lengths, scores, lam, min_tokens):
    """A DP that keeps one state per end position (the best partial objective): approximate."""
    c = np.concatenate([[0], np.cumsum(lengths)])

    def value(s, q, k, total):
        return 0.0 if k == 1 else s / (k - 1) - lam * math.sqrt(max(k * q / total**2 - 1, 0))

    cell = {}
    for i in range(1, len(lengths) + 1):
        best = (0.0, float(c[i]) ** 2, 1, []) if c[i] >= min_tokens else None
        for j in range(1, i):
            if j in cell and c[i] - c[j] >= min_tokens:
                s, q, k, cuts = cell[j]
                cand = (s + scores[j - 1], q + float(c[i] - c[j]) ** 2, k + 1, [*cuts, j - 1])
                if best is None or value(*cand[:3], c[i]) > value(*best[:3], c[i]):
                    best = cand
        if best:
            cell[i] = best
    return objective(lengths, scores, cell[len(lengths)][3], lam)


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


def test_one_state_per_cell_dp_is_strictly_worse():
    lengths = [60, 60, 100, 60, 90, 90, 20]
    scores = [0, 1, 1, 3, 3, 0]
    exact = segment(lengths, scores, 0.5, 1)
    assert exact.cuts == [3] and exact.objective == pytest.approx(2.9166666, abs=1e-6)
    assert one_state_per_position(lengths, scores, 0.5, 1) < exact.objective - 0.5


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
