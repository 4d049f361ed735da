"""Hybrid attention (OLMo-3's layout: sliding-window and full layers) in the reference engine: the masked forward
equals decoding with physical eviction, the sliding layers hold only their window, and the measured KV equals the
token-replay simulator's (`memento kv`)."""

from __future__ import annotations

import pytest
import torch
from helpers import POLICIES, small_trace, tiny_model

from memento.core.chat import label_trace, memento_ids
from memento.core.errors import MementoError
from memento.core.kv import KVGeometry, replay
from memento.core.policy import EvictionPolicy, eviction_schedule
from memento.engine.generate import ReferenceEngine
from memento.engine.reference import teacher_force
from memento.engine.sampling import Sampling
from memento.tokenizer import char_tokenizer
from memento.train.masks import model_mask

WINDOW = 16


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer()


@pytest.fixture(scope="module")
def olmo(chars):
    return tiny_model(len(chars), "olmo3", window=WINDOW)


@pytest.mark.parametrize("name", ["keep0", "keep1", "keep0-mask-delimiters", "keep0-last-block-for-answer"])
def test_masked_forward_equals_evicted_decoding_with_sliding_layers(olmo, chars, name):
    policy = POLICIES[name]
    encoded, spans = label_trace(small_trace(4), chars)
    schedule = torch.from_numpy(eviction_schedule(spans, policy))[None]
    mask = model_mask(olmo, schedule, torch.zeros_like(schedule, dtype=torch.bool))
    ids = torch.tensor([encoded.ids])
    with torch.no_grad():
        full = olmo(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1])[None]).logits[0]
    decoded, decoder = teacher_force(olmo, memento_ids(chars), policy, encoded.ids, encoded.completion_start, True)
    assert len(encoded.ids) > 4 * WINDOW  # the window really cuts
    assert float((full - decoded).abs().max()) <= 1e-4
    cache = decoder.cache
    assert cache.sliding.pos.shape[1] <= WINDOW < cache.slots  # the sliding layers hold their window only


def test_no_eviction_equals_hf_generate_with_its_own_sliding_cache(olmo, chars):
    engine = ReferenceEngine(olmo, chars, EvictionPolicy(-1))
    prompt = "Sum 3, 4 and 5, then check it twice."
    ours = engine.generate(prompt, Sampling(max_new_tokens=60))[0]
    ids = torch.tensor([ours.prompt_ids])
    with torch.no_grad():
        theirs = olmo.generate(ids, max_new_tokens=60, do_sample=False, pad_token_id=0)[0, ids.shape[1] :].tolist()
    assert ours.ids == theirs[: len(ours.ids)] and len(ours.ids) >= 30


@pytest.mark.parametrize("name", ["keep0", "keep1", "full"])
def test_measured_kv_equals_the_replay_with_windows(olmo, chars, name):
    """The engine's peak and final bytes (full layers: the survivors; sliding layers: the survivors in the window)
    equal `memento kv`'s replay of the same tokens with the model's geometry."""
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


def test_restart_with_sliding_layers_is_refused_clearly(olmo, chars):
    engine = ReferenceEngine(olmo, chars, EvictionPolicy(0, restart=True))
    with pytest.raises(MementoError, match="restart mode with sliding-window layers is not handled yet"):
        engine.generate("1+1", Sampling(max_new_tokens=4))
