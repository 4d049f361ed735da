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
from helpers import POLICIES as POLICIES_ALL
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


@pytest.mark.parametrize("name", ["keep0-restart-release", "keep1-restart-release", "keep0-restart"])
def test_restart_modes_equal_their_masked_forward_except_the_memento_being_written(tiny_model, tokenizer, name):
    """Both restart modes: decoding with recomputation = the forward under the mode's mask, except at the queries of
    each memento whose end evicts a block (sampled while that block was still visible). The release's mode
    recomputes only that memento, so with keep 1 the block after the evicted one keeps having seen it."""
    from memento.train.masks import recompute_triggers

    policy = POLICIES_ALL[name]
    encoded, spans = label_trace(small_trace(4), tokenizer)
    schedule = torch.from_numpy(eviction_schedule(spans, policy))[None]
    redo = recompute_triggers([spans], policy, len(encoded.ids))
    mask = model_mask(tiny_model, schedule, torch.zeros_like(schedule, dtype=torch.bool), True, redo)
    with torch.no_grad():
        ids = torch.tensor([encoded.ids])
        full = tiny_model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1])[None]).logits[0]
    incremental, cache = evicted_logits(tiny_model, memento_ids(tokenizer), encoded, policy)
    evicting = spans.block >= policy.keep_last_n_blocks  # mementos whose end evicts a block
    kinds = [Kind.SUMMARY_START, Kind.SUMMARY] + ([] if policy.delimiters_go else [Kind.BLOCK_END])
    writing = np.isin(spans.kind, kinds) & evicting
    diff = (full - incremental).abs().amax(-1).numpy()
    assert diff[~writing].max() <= TOL
    assert diff[writing].min() > TOL, "memento queries were computed while their block was visible"
    cache.check_integrity()
    if name == "keep1-restart-release":  # block 1 saw block 0, and keeps that KV: strict mode would recompute it
        strict = masked_logits(tiny_model, encoded.ids, spans, POLICIES_ALL["keep1-restart"])
        later = np.flatnonzero(spans.block >= 2)
        assert (strict - full).abs().amax(-1).numpy()[later].max() > TOL


def test_the_two_restart_modes_coincide_with_keep0_and_the_delimiters_evicted(tiny_model, tokenizer):
    """With keep 0 and mask_delimiters (the demo's restart ablation) both modes recompute exactly the memento."""
    encoded, _ = label_trace(small_trace(3), tokenizer)
    special = memento_ids(tokenizer)
    runs = [
        evicted_logits(
            tiny_model, special, encoded, EvictionPolicy(0, mask_delimiters=True, restart=True, restart_mode=m)
        )
        for m in ("strict", "release")
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1].index, runs[1][1].index)
    kept = evicted_logits(tiny_model, special, encoded, POLICIES_ALL["keep0-restart"])[0]  # strict, delimiters kept
    release = evicted_logits(tiny_model, special, encoded, POLICIES_ALL["keep0-restart-release"])[0]
    assert (kept - release).abs().max() > TOL  # the release evicts the delimiters whatever mask_delimiters says


@pytest.mark.parametrize("name", ["keep1", "keep1-restart-release"])
def test_selective_forgetting_equals_its_masked_forward(tiny_model, tokenizer, name):
    """`forget` flags blocks 1 and 2 by their text: decoding forgets those strictly (in the policy's restart mode,
    with or without its `restart`) and evicts blocks 0 and 3 normally. Its logits equal the forward under the mask
    of those forgotten blocks wherever a token was not recomputed after it was sampled, and its final KV equals that
    forward's KV everywhere. (Flagging every block or none: `test_engine.py`.)"""
    from memento.core.policy import forgetter
    from memento.train.masks import recompute_triggers

    policy = POLICIES_ALL[name]
    encoded, spans = label_trace(small_trace(5), tokenizer)
    rule = forgetter(r"Step [12]:", lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
    special, n = memento_ids(tokenizer), len(encoded.ids)
    logits, decoder = teacher_force(tiny_model, special, policy, encoded.ids, encoded.completion_start, forget=rule)
    schedule = torch.from_numpy(eviction_schedule(spans, policy))[None]
    redo = recompute_triggers([spans], policy, n, [{1, 2}])
    mask = model_mask(tiny_model, schedule, torch.zeros_like(schedule, dtype=torch.bool), policy.restart, redo)
    with torch.no_grad():
        ids, positions = torch.tensor([encoded.ids]), torch.arange(n)[None]
        out = tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    sampled = (redo[0] < 0).numpy()  # never recomputed: the logits decoding computed are the forward's
    assert not sampled.all() and (out.logits[0] - logits).abs().amax(-1).numpy()[sampled].max() <= TOL
    cache = decoder.cache
    cache.check_integrity()
    assert sorted(cache.index[0].tolist()) == np.flatnonzero(schedule[0].numpy() > n).tolist()
    index = cache.index[0]
    for ours, full in zip(cache.kv.layers, out.past_key_values.layers, strict=True):
        assert (ours.keys[0] - full.keys[0][:, index]).abs().max() <= TOL
        assert (ours.values[0] - full.values[0][:, index]).abs().max() <= TOL
    assert decoder.rows[0].forgotten == 2
