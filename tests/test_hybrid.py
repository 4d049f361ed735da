"""Hybrid attention (OLMo-3's layout: sliding-window and full layers) in the reference engine: the masked forward
equals decoding with physical eviction (restart modes included), the window counts the tokens the cache holds, the
sliding layers forget what no later window can reach, and the measured KV equals the token-replay simulator's
(`memento kv`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import POLICIES, small_trace, tiny_model

from memento.core.chat import label_trace, memento_ids
from memento.core.kv import KVGeometry, replay
from memento.core.policy import EvictionPolicy, eviction_schedule
from memento.core.spans import Kind
from memento.engine.generate import ReferenceEngine
from memento.engine.reference import teacher_force
from memento.engine.sampling import Sampling
from memento.tokenizer import char_tokenizer
from memento.train.masks import dense_mask, mask_mod, model_mask, recompute_triggers

WINDOW = 16


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer()


@pytest.fixture(scope="module")
def olmo(chars):
    return tiny_model(len(chars), "olmo3", window=WINDOW)


def forward_and_decode(olmo, chars, policy):
    encoded, spans = label_trace(small_trace(4), chars)
    schedule = torch.from_numpy(eviction_schedule(spans, policy))[None]
    redo = recompute_triggers([spans], policy, len(encoded.ids))
    mask = model_mask(olmo, schedule, torch.zeros_like(schedule, dtype=torch.bool), policy.restart, redo)
    ids = torch.tensor([encoded.ids])
    with torch.no_grad():
        full = olmo(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1])[None]).logits[0]
    decoded, decoder = teacher_force(olmo, memento_ids(chars), policy, encoded.ids, encoded.completion_start, True)
    assert len(encoded.ids) > 4 * WINDOW  # the window really cuts
    return spans, (full - decoded).abs().amax(-1).numpy(), decoder.cache


@pytest.mark.parametrize("name", ["keep0", "keep1", "keep0-mask-delimiters", "keep0-last-block-for-answer"])
def test_masked_forward_equals_evicted_decoding_with_sliding_layers(olmo, chars, name):
    _, diff, cache = forward_and_decode(olmo, chars, POLICIES[name])
    assert diff.max() <= 1e-4
    assert cache.sliding.pos.shape[1] < cache.slots  # the sliding layers forgot tokens the full layers hold


@pytest.mark.parametrize("name", ["keep0-restart", "keep1-restart-release"])
def test_restart_modes_with_sliding_layers_equal_their_masked_forward(olmo, chars, name):
    """As without windows (test_invariant): equal except at the queries of each memento whose end evicts a block,
    sampled while it was visible; the recomputed tokens' windows reach back over what the sliding layers kept."""
    policy = POLICIES[name]
    spans, diff, _ = forward_and_decode(olmo, chars, policy)
    kinds = [Kind.SUMMARY_START, Kind.SUMMARY] + ([] if policy.delimiters_go else [Kind.BLOCK_END])
    writing = np.isin(spans.kind, kinds) & (spans.block >= policy.keep_last_n_blocks)
    assert diff[~writing].max() <= 1e-4
    assert diff[writing].min() > 1e-4


def test_the_window_counts_held_tokens_not_positions(chars):
    """After an eviction the survivors slide closer: a query sees keys more than `window` positions back, yet never
    more than `window` keys; the FlexAttention rule (epoch tables, no T x T tensor) is the same mask."""
    from torch.nn.attention.flex_attention import create_mask

    from memento.core.mask import within_window

    _, spans = label_trace(small_trace(4), chars)
    schedule = torch.from_numpy(eviction_schedule(spans, POLICIES["keep0"]))[None]
    pad = torch.zeros_like(schedule, dtype=torch.bool)
    sliding = within_window(dense_mask(schedule, pad), WINDOW)[0, 0]
    q, k = torch.nonzero(sliding, as_tuple=True)
    assert int((q - k).max()) >= 2 * WINDOW
    assert int(sliding.sum(-1).max()) == WINDOW
    n = schedule.shape[1]
    flex = create_mask(mask_mod(schedule, pad, window=WINDOW), 1, None, n, n, "cpu")[0, 0]
    assert torch.equal(flex, sliding)


def test_no_eviction_equals_hf_generate_with_its_own_sliding_cache(olmo, chars):
    engine = ReferenceEngine(olmo, chars, EvictionPolicy(-1))
    prompt = "Sum 3, 4 and 5, then check it twice."
    ours = engine.generate(prompt, Sampling(max_new_tokens=60))[0]
    ids = torch.tensor([ours.prompt_ids])
    with torch.no_grad():
        theirs = olmo.generate(ids, max_new_tokens=60, do_sample=False, pad_token_id=0)[0, ids.shape[1] :].tolist()
    assert ours.ids == theirs[: len(ours.ids)] and len(ours.ids) >= 30


@pytest.mark.parametrize("name", ["keep0", "keep1", "full", "keep0-restart", "keep0-last-block-for-answer"])
def test_measured_kv_equals_the_replay_with_windows(olmo, chars, name):
    """The engine's peak and final bytes (full layers: the survivors; sliding layers: a window of the tokens held
    for good, and every later one) equal `memento kv`'s replay of the same tokens with the model's geometry."""
    policy = POLICIES[name]
    trace = small_trace(4)
    encoded, _ = label_trace(trace, chars)
    engine = ReferenceEngine(olmo, chars, policy)
    done = engine.generate(trace.problem, force=[encoded.ids[encoded.completion_start :]])[0]
    geometry = KVGeometry.from_config(olmo.config)
    assert (geometry.sliding_layers, geometry.window) == (3, WINDOW)
    replayed = replay(done.spans(engine.special, fed=True), policy, engine.engine.geometry, len(done.prompt_ids))
    assert done.stats.peak_kv_bytes == replayed.peak_bytes
    assert done.stats.final_kv_bytes == int(replayed.bytes[-1])
    flat = KVGeometry("no windows", 4, 2, 16, engine.engine.geometry.dtype_bytes)
    assert done.stats.peak_kv_bytes < replay(done.spans(engine.special, fed=True), policy, flat).peak_bytes
