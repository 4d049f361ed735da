"""The invariant joining training and inference: the stage-2 masked forward equals decoding with physical eviction.

For a trace, the logits of one forward under the Memento mask must equal, at every position, those of the reference
engine teacher-forcing the same tokens while it frees finished blocks' KV (original position ids kept), <= 1e-4 in
fp32. Checked on random tiny Qwen3, Phi-3/Phi-4 (`Phi3ForCausalLM`) and Llama models and on the real SmolLM2-135M.
"""

from __future__ import annotations

import helpers
import numpy as np
import pytest
import torch
from helpers import policies, small_trace
from hypothesis import HealthCheck, given, settings
from test_format import traces

from memento.core.chat import label_trace, memento_ids
from memento.core.policy import EvictionPolicy, eviction_schedule
from memento.core.spans import Kind
from memento.engine.reference import teacher_force
from memento.tokenizer import load_tokenizer
from memento.train.masks import model_mask

POLICIES = policies("keep0", "keep1", "keep0-mask-delimiters", "keep1-mask-delimiters", "keep0-last-block-for-answer")
TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="module", params=["qwen3", "phi3", "llama", "llama-eager"])
def tiny_model(request, tokenizer):
    """sdpa models, and one with eager attention (which must get an additive mask, not a boolean one)."""
    arch, _, attention = request.param.partition("-")
    model = helpers.tiny_model(len(tokenizer), arch, attention or "sdpa")
    assert model.config._attn_implementation == (attention or "sdpa")
    return model


def masked_logits(model, ids, spans, policy) -> torch.Tensor:
    schedule = torch.from_numpy(eviction_schedule(spans, policy))[None]
    mask = model_mask(model, schedule, torch.zeros_like(schedule, dtype=torch.bool), policy.restart)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), attention_mask=mask, position_ids=torch.arange(len(ids))[None])
    return out.logits[0]


def evicted_logits(model, special, encoded, policy):
    logits, decoder = teacher_force(model, special, policy, encoded.ids, encoded.completion_start)
    return logits, decoder.cache


def check(model, tokenizer, trace, policy):
    encoded, spans = label_trace(trace, tokenizer)
    special = memento_ids(tokenizer)
    full = masked_logits(model, encoded.ids, spans, policy)
    incremental, cache = evicted_logits(model, special, encoded, policy)
    diff = (full - incremental).abs().amax(-1)
    # fp32 sums in another order (one forward vs token-by-token decoding) differ in proportion to the logits: a real
    # model's reach ~40 (SmolLM2: 0.8-1.1e-4 apart here), an eviction error shows as ~20 (a wrong policy: 22.3).
    tol = TOL * max(1.0, float(full.abs().max()) / 10)
    assert float(diff.max()) <= tol, f"position {int(diff.argmax())} differs by {float(diff.max()):.2e} > {tol:.1e}"
    cache.check_integrity()
    schedule = eviction_schedule(spans, policy)
    survivors = np.flatnonzero(schedule > len(encoded.ids))
    assert sorted(cache.index[0].tolist()) == survivors.tolist(), "the cache holds exactly the surviving tokens"
    return spans


@pytest.mark.parametrize("name", POLICIES)
def test_masked_forward_equals_evicted_decoding(tiny_model, tokenizer, name):
    spans = check(tiny_model, tokenizer, small_trace(4), POLICIES[name])
    assert spans.n_blocks == 4


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=traces)
def test_invariant_on_generated_traces(tokenizer, trace):
    model = helpers.tiny_model(len(tokenizer), "qwen3")
    for policy in (POLICIES["keep0"], POLICIES["keep1-mask-delimiters"]):
        check(model, tokenizer, trace, policy)


def test_invariant_on_smollm2(smollm2_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from memento.tokenizer import init_memento_embeddings

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    init_memento_embeddings(model, tokenizer)
    for name in ("keep0", "keep1", "keep0-mask-delimiters"):
        check(model, tokenizer, small_trace(3), POLICIES[name])


def test_restart_equals_forward_where_mementos_cannot_see_their_block(tiny_model, tokenizer):
    """Restart decoding = the restart-mask forward, except at the queries of the memento being written (they were
    sampled while their block was still there); the retained mementos' KV differs from normal eviction."""
    restart, normal = EvictionPolicy(0, restart=True), EvictionPolicy(0)
    encoded, spans = label_trace(small_trace(3), tokenizer)
    special = memento_ids(tokenizer)
    full = masked_logits(tiny_model, encoded.ids, spans, restart)
    incremental, cache = evicted_logits(tiny_model, special, encoded, restart)
    writing = np.isin(spans.kind, [Kind.BLOCK_END, Kind.SUMMARY_START, Kind.SUMMARY])
    diff = (full - incremental).abs().amax(-1).numpy()
    assert diff[~writing].max() <= TOL
    assert diff[writing].min() > TOL, "memento queries were computed while their block was visible"
    _, normal_cache = evicted_logits(tiny_model, special, encoded, normal)
    assert torch.equal(cache.index, normal_cache.index), "restart keeps the same tokens"
    memento = torch.from_numpy(np.flatnonzero((spans.kind == Kind.SUMMARY) & (spans.block == 0)))
    slots = torch.isin(cache.index[0], memento)
    keys = cache.kv.layers[-1].keys[0][:, slots]
    normal_keys = normal_cache.kv.layers[-1].keys[0][:, slots]
    assert (keys - normal_keys).abs().max() > TOL, "restart recomputed memento 0's KV without its block"
