"""The OpenAI-compatible backend over real HTTP on loopback, against a server that injects faults; parser fuzzing."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento.core.rows import read_traces
from memento.data.boundaries import parse_scores, repair_scores
from memento.data.compress import parse_memento, parse_mementos
from memento.data.fakellm import FakeLLM
from memento.data.judge import parse_verdict
from memento.data.llm import (
    LLMOutputError,
    LLMRequestError,
    LLMUnavailable,
    OpenAIBackend,
    Usage,
    current_usage,
    parse_json_object,
)
from memento.data.pipeline import Config, build


def config(url: str, **kw) -> Config:
    return Config(**{"backend": "openai", "base_url": url, "model": "fake", "timeout": 0.5, "limit": 2} | kw)


def test_faults_are_survived_and_counted(tmp_path):
    with FakeLLM(slow_seconds=1.5) as llm:
        llm.faults.extend(["score_boundaries:wrong_count"] * 6)  # a whole window fails 6 times: repaired
        llm.faults.extend(["score_boundaries:bad_json", "429", "500", "slow", "bad_body", "compress:truncated"])
        stats = build("champ", tmp_path, config(llm.url))
        assert not llm.faults, "every fault was served"
    assert stats["succeeded"] == 2 and stats["failed"] == 0 and stats["unfinished"] == 0
    assert stats["llm"]["repairs"] == 1
    assert stats["llm"]["retries"] >= 5 + 1 + 4  # 5 stage retries of the window, 1 for bad JSON, 4 transport
    assert stats["llm"]["tokens"] > 0 and stats["llm"]["calls"] > 0
    traces = read_traces(tmp_path / "openmementos.jsonl")
    assert all(b.memento for t in traces for b in t.blocks)  # the truncated batch was redone block by block
    report = json.loads((tmp_path / "stats.json").read_text())
    assert report["llm"]["repairs"] == 1


def test_endpoint_down_leaves_traces_for_a_rerun_and_cache_prevents_repeats(tmp_path):
    with FakeLLM() as llm:
        llm.faults.extend(["500"] * 2)
        usage = Usage()
        token = current_usage.set(usage)
        with pytest.raises(LLMUnavailable, match="no usable answer after 2 tries"):
            OpenAIBackend(llm.url, "fake", max_retries=1, backoff=0.0).complete([{"role": "user", "content": "hi"}])
        current_usage.reset(token)
        assert usage.retries == 1 and usage.calls == 0
        cfg_fast = config(llm.url, limit=1)
        stats = build("champ", tmp_path, cfg_fast)
        assert stats["succeeded"] == 1
        before = llm.requests["total"]
        (tmp_path / "journal.jsonl").unlink()  # as if the run died after its calls but before journaling
        again = build("champ", tmp_path, cfg_fast)
        assert llm.requests["total"] == before  # every call came from the cache
        assert again["llm"]["cached"] > 0 and again["llm"]["calls"] == 0


def test_unfinished_trace_is_not_journaled(tmp_path, monkeypatch):
    import memento.data.llm as llm_module

    monkeypatch.setattr(llm_module.time, "sleep", lambda s: None)  # no real backoff waits in this test
    with FakeLLM() as llm:
        llm.faults.extend(["500"] * 7)  # one request exhausts its 7 tries
        stats = build("champ", tmp_path, config(llm.url, workers=1))
        assert stats["unfinished"] == 1 and stats["succeeded"] == 1
        rerun = build("champ", tmp_path, config(llm.url))
        assert rerun["succeeded"] == 2 and rerun["unfinished"] == 0


def test_client_errors_fail_at_once():
    with FakeLLM() as llm:
        backend = OpenAIBackend(llm.url, "fake")
        with pytest.raises(LLMRequestError, match="HTTP 400"):
            backend.complete([])
        assert llm.requests["total"] == 1  # not retried  # the server cannot read a request without messages


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 12) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
keys = st.sampled_from(["scores", "mementos", "memento", "formulas", "numbers", "feedback", "deductions", "x"])
replies = st.one_of(
    st.text(max_size=300),
    st.dictionaries(keys, json_values, max_size=8).map(json.dumps),
    st.dictionaries(keys, json_values, max_size=8).map(lambda d: "```json\n" + json.dumps(d) + "\n```"),
    st.dictionaries(keys, json_values, max_size=8).map(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2]),
)


@settings(max_examples=400, deadline=None)
@given(replies, st.integers(1, 20))
def test_parsers_raise_only_their_own_error(reply, count):
    for parse in (
        parse_json_object,
        parse_memento,
        parse_verdict,
        lambda r: parse_scores(r, count),
        lambda r: parse_mementos(r, count),
    ):
        with contextlib.suppress(LLMOutputError):
            parse(reply)
    repaired = repair_scores(reply, count)
    assert len(repaired) == count and all(0 <= s <= 3 for s in repaired)


def test_parsers_accept_good_replies():
    assert parse_scores('Sure: {"scores": [0, 3, 2]}', 3) == [0.0, 3.0, 2.0]
    with pytest.raises(LLMOutputError, match="expected a list of 2 scores, got 3"):
        parse_scores('{"scores": [0, 3, 2]}', 2)
    assert parse_mementos('{"mementos": ["a", "", "<|block_end|>"]}', 4) == ["a", None, None, None]
    verdict = parse_verdict(
        '{"formulas": 3, "numbers": 2, "methods": 2, "validation": 1, "correctness": 1, '
        '"result_first": 1, "deductions": 2, "score": 10, "feedback": "x"}'
    )
    assert verdict.score == 8.0
    text = "SCORE: 7/10\nFORMULAS: 2/3\nNUMERICAL_VALUES: 2/2\nMETHODS: 1/2\nVALIDATION: 1/1\nCORRECTNESS: 1/1\n"
    verdict = parse_verdict(text + "STRUCTURE: 1/1\nDEDUCTIONS: -1\nFEEDBACK: copy x^2 + 1 = 5 verbatim")
    assert verdict.score == 7.0 and verdict.parts["methods"] == 1 and verdict.feedback == "copy x^2 + 1 = 5 verbatim"
    assert parse_verdict("Overall... SCORE: 6.5/10\nFEEDBACK: add the value").score == 6.5  # the total alone
    with pytest.raises(LLMOutputError, match="no SCORE"):
        parse_verdict("FORMULAS: 3/3")


def test_hf_backend_with_a_real_small_model():
    """SmolLM2-135M as the scoring LLM: its replies are rarely valid JSON, and the stage repairs instead of failing."""
    from memento.data.boundaries import LLMScorer
    from memento.data.llm import HFBackend

    backend = HFBackend("smollm2", max_new_tokens=24)
    usage = Usage()
    token = current_usage.set(usage)
    try:
        reply = backend.complete([{"role": "user", "content": "Say hello."}])
        scores = LLMScorer(backend, retries=0).score("p", ["We add 2 and 2.\n\n", "Wait, check it: 4. ", "Done."])
    finally:
        current_usage.reset(token)
    assert isinstance(reply, str) and reply.strip()
    assert len(scores) == 2 and all(0 <= s <= 3 for s in scores)
    assert usage.calls == 2 and usage.tokens > 0


def test_cache_asks_once_for_concurrent_identical_requests(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from memento.data.llm import CachedBackend

    with FakeLLM(latency=0.2) as llm:
        backend = CachedBackend(OpenAIBackend(llm.url, "fake"), tmp_path / "cache.sqlite")
        message = [{"role": "user", "content": "TASK: judge\nBlock:\nx = 1\n"}]
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: backend.complete(message), range(8)))
        assert len(set(replies)) == 1 and llm.requests["total"] == 1


def test_two_pass_scoring_averages_windows_of_16_and_11():
    from memento.data.boundaries import LLMScorer

    units = [f"Step {i}: x = {i}.\n\n" if i % 3 else f"Wait, let me check {i}. " for i in range(40)]
    with FakeLLM() as llm:
        backend = OpenAIBackend(llm.url, "fake")
        one = LLMScorer(backend).score("p", units)
        calls_one = llm.requests["total"]
        two = LLMScorer(backend, two_pass=True).score("p", units)
        assert calls_one == 3 and llm.requests["total"] - calls_one == 3 + 4  # ceil(39/16) + ceil(39/11)
        eleven = LLMScorer(backend, window=11).score("p", units)
    assert len(two) == len(one) == 39 and all(s * 2 == int(s * 2) for s in two)
    assert two == [(a + b) / 2 for a, b in zip(one, eleven, strict=True)]
    assert len(set(one)) > 1


def test_requests_are_safe_for_reasoning_models():
    """max_completion_tokens (reasoning counts against it; the release's 16,000), no temperature unless set,
    reasoning_effort only when given."""
    hello = [{"role": "user", "content": "hi"}]
    with FakeLLM() as llm:
        OpenAIBackend(llm.url, "fake").complete(hello, max_tokens=256)
        assert llm.last == {"model": "fake", "max_completion_tokens": 16_000}
        OpenAIBackend(llm.url, "fake", temperature=0.6, reasoning_effort="high", max_completion_tokens=None).complete(
            hello, max_tokens=256
        )
        assert llm.last == {
            "model": "fake",
            "max_completion_tokens": 256,
            "temperature": 0.6,
            "reasoning_effort": "high",
        }
