"""The eviction schedule against an engine-like oracle that evicts from a cache list while reading token ids."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import small_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_format import traces

from memento.core.chat import label_trace, memento_ids
from memento.core.errors import MementoError
from memento.core.policy import NEVER, EvictionPolicy, eviction_schedule, visible
from memento.core.spans import Kind

policies = st.builds(
    lambda keep, delimiters, last, restart, release: EvictionPolicy(
        keep, delimiters, last, restart, "release" if restart and release else "strict"
    ),
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


def oracle_views(ids, spans, special, policy) -> np.ndarray:
    """(T, T) bool: what each query sees in an engine that drops cache entries when a trigger token is sampled."""
    alive = np.zeros(len(ids), bool)
    views = np.zeros((len(ids), len(ids)), bool)
    finished: list[int] = []  # blocks whose memento is closed, oldest first
    release = policy.restart and policy.restart_mode == "release"  # the release always evicts the delimiters
    own = [Kind.BLOCK] + ([Kind.BLOCK_START, Kind.BLOCK_END] if policy.mask_delimiters or release else [])

    def evict(block: int) -> None:
        alive[(spans.block == block) & np.isin(spans.kind, own)] = False

    deferred = policy.keep_last_n_blocks == 0 and policy.keep_last_block_for_answer
    for t, token in enumerate(ids):
        if policy.evicts and token == special.summary_end and spans.kind[t] == Kind.SUMMARY_END:
            finished.append(int(spans.block[t]))
            if not deferred and len(finished) > policy.keep_last_n_blocks:
                evict(finished[-1 - policy.keep_last_n_blocks])
        if policy.evicts and deferred and token == special.block_start and finished:
            evict(finished[-1])
        alive[t] = True
        views[t] = alive
    return views


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=traces, policy=policies)
def test_schedule_matches_engine_oracle(qwen, trace, policy):
    enc, spans = label_trace(trace, qwen)
    mask = visible(eviction_schedule(spans, policy))
    views = oracle_views(enc.ids, spans, memento_ids(qwen), policy)
    wrong = np.flatnonzero((mask != views).any(axis=1))
    assert len(wrong) == 0, f"first wrong query {wrong[:1]} ({Kind(spans.kind[wrong[0]]).name})"


def test_design_rule_keep0(qwen):
    """DESIGN.md: block i sees prompt, <think>, earlier mementos and itself; memento i sees block i; the answer sees
    the prompt and the mementos; <|summary_end|> does not see its own block."""
    enc, spans = label_trace(small_trace(3), qwen)
    mask = visible(eviction_schedule(spans, EvictionPolicy()))
    kind, block = spans.kind, spans.block
    content = lambda k, i: np.flatnonzero((kind == k) & (block == i))  # noqa: E731
    q = content(Kind.BLOCK, 2)[-1]
    assert mask[q, content(Kind.BLOCK, 2)].all() and not mask[q, content(Kind.BLOCK, 1)].any()
    assert mask[q, content(Kind.SUMMARY, 0)].all() and mask[q, content(Kind.SUMMARY, 1)].all()
    assert mask[q, : enc.completion_start + 1].all()
    assert mask[content(Kind.SUMMARY, 1)[-1], content(Kind.BLOCK, 1)].all()
    end = spans.first(Kind.SUMMARY_END)[1]
    assert not mask[end, content(Kind.BLOCK, 1)].any() and mask[end - 1, content(Kind.BLOCK, 1)].all()
    answer = np.flatnonzero(kind == Kind.ANSWER)[0]
    assert not mask[answer, kind == Kind.BLOCK].any() and mask[answer, kind == Kind.SUMMARY].all()
    assert mask[answer, kind == Kind.BLOCK_START].all()  # delimiters stay visible (mask_delimiters=False)


def test_keep_last_block_for_answer_and_keep1(qwen):
    _, spans = label_trace(small_trace(3), qwen)
    last = (spans.kind == Kind.BLOCK) & (spans.block == 2)
    answer = np.flatnonzero(spans.kind == Kind.ANSWER)[0]
    for policy, sees_last in (
        (EvictionPolicy(), False),
        (EvictionPolicy(keep_last_block_for_answer=True), True),
        (EvictionPolicy(keep_last_n_blocks=1), True),
    ):
        assert visible(eviction_schedule(spans, policy))[answer, last].all() == sees_last
    schedule = eviction_schedule(spans, EvictionPolicy(keep_last_block_for_answer=True))
    first = (spans.kind == Kind.BLOCK) & (spans.block == 0)
    assert (schedule[first] == spans.first(Kind.BLOCK_START)[1]).all()


def test_full_policy_evicts_nothing(qwen):
    _, spans = label_trace(small_trace(2), qwen)
    assert (eviction_schedule(spans, EvictionPolicy.named("full")) == NEVER).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_last_n_blocks": -2}, "keep_last_n_blocks must be"),
        ({"keep_last_n_blocks": -1, "restart": True}, "restart needs eviction"),
        ({"keep_last_n_blocks": -1, "mask_delimiters": True}, "mask_delimiters needs eviction"),
        ({"max_block_tokens": 0}, "max_block_tokens must be a positive integer"),
    ],
)
def test_invalid_policies(kwargs, message):
    with pytest.raises(MementoError, match=message):
        EvictionPolicy(**kwargs)


def test_named_policies():
    assert EvictionPolicy.named("keep0") == EvictionPolicy()
    assert EvictionPolicy.named("keep3").keep_last_n_blocks == 3
    assert not EvictionPolicy.named("full").evicts
    with pytest.raises(MementoError, match="unknown policy 'keepall'"):
        EvictionPolicy.named("keepall")
