"""The three forms of the training mask agree with the engine-simulating reference, padding included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import small_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_format import traces
from test_policy import policies
from torch.nn.attention.flex_attention import create_mask

from memento.core.chat import label_trace, memento_ids
from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.core.spans import label
from memento.train.attention import register
from memento.train.masks import (
    dense_mask,
    flex_block_mask,
    mask_mod,
    model_mask,
    recompute_triggers,
    reference_mask,
    schedules,
)


def padded_batch(tokenizer, batch, policy):
    """Right-padded ids, their labels (PAD at padding), schedules and the pad mask of a list of traces."""
    encoded = [label_trace(t, tokenizer).encoded for t in batch]
    length = max(len(e.ids) for e in encoded)
    special = memento_ids(tokenizer)
    ids = np.full((len(batch), length), tokenizer.pad_token_id, dtype=np.int64)
    attn = np.zeros((len(batch), length), dtype=np.int64)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = e.ids
        attn[row, : len(e.ids)] = 1
    spans = [label(ids[r], special, encoded[r].completion_start, attention_mask=attn[r]) for r in range(len(batch))]
    return ids, spans, schedules(spans, policy, length), torch.from_numpy(attn == 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(traces, min_size=1, max_size=3), policy=policies)
def test_dense_and_flex_masks_equal_the_reference(qwen, batch, policy):
    ids, spans, schedule, pad = padded_batch(qwen, batch, policy)
    special = memento_ids(qwen)
    b, n = ids.shape
    redo = recompute_triggers(spans, policy, n)  # the release's restart mode, else None
    dense = dense_mask(schedule, pad, policy.restart, redo)
    flex = create_mask(mask_mod(schedule, pad, policy.restart, redo), b, None, n, n, "cpu")
    for row in range(b):
        ref = reference_mask(ids[row], spans[row], special.summary_end, special.block_start, policy)
        np.testing.assert_array_equal(dense[row, 0].numpy(), ref, err_msg=f"row {row}")
    assert torch.equal(flex, dense)
    assert dense[..., :].any(-1).all(), "every query must see something, or SDPA returns NaN"


def test_causal_schedule_is_plain_causal(qwen):
    _ids, _spans, schedule, pad = padded_batch(qwen, [small_trace(2)], None)
    mask = dense_mask(schedule, torch.zeros_like(pad))[0, 0]
    assert torch.equal(mask, torch.ones_like(mask).tril())


def test_restart_hides_the_block_from_its_memento(qwen):
    from memento.core.spans import Kind

    policy = EvictionPolicy(0, restart=True)
    _ids, spans, schedule, pad = padded_batch(qwen, [small_trace(2)], policy)
    mask = dense_mask(schedule, pad, restart=True)[0, 0].numpy()
    normal = dense_mask(schedule, pad)[0, 0].numpy()
    kind, block = spans[0].kind, spans[0].block
    memento = np.flatnonzero((kind == Kind.SUMMARY) & (block == 0))
    content = np.flatnonzero((kind == Kind.BLOCK) & (block == 0))
    assert normal[np.ix_(memento, content)].all() and not mask[np.ix_(memento, content)].any()
    rows_differ = np.flatnonzero((mask != normal).any(1))
    assert set(Kind(k).name for k in kind[rows_differ]) <= {"BLOCK_END", "SUMMARY_START", "SUMMARY"}


def test_model_mask_matches_each_attention_implementation(smollm2_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    schedule = torch.tensor([[9, 9, 3, 9]])
    pad = torch.tensor([[False, False, False, True]])
    config = LlamaConfig(
        vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    register()
    for impl in ("sdpa", "memento_sdpa", "eager"):
        config._attn_implementation = impl
        mask = model_mask(LlamaForCausalLM(config), schedule, pad)
        seen = mask if mask.dtype == torch.bool else mask == 0
        assert torch.equal(seen, dense_mask(schedule, pad))
        assert mask.dtype == (torch.float32 if impl == "eager" else torch.bool)
    config._attn_implementation = "flex_attention"
    with pytest.raises(MementoError, match="needs CUDA"):
        model_mask(LlamaForCausalLM(config), schedule, pad)
    block = flex_block_mask(schedule, pad)
    assert block.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "memento_sdpa"])
def test_sliding_window_layers_get_the_memento_mask_within_their_window(attention):
    """A hybrid model (OLMo-3's layout: sliding-window and full layers) gets one mask per layer type. With nothing
    evicted they are exactly what transformers builds itself; with eviction, the sliding layers' is the Memento mask
    cut to the window."""
    from helpers import tiny_model

    if attention == "memento_sdpa":
        register()
    model = tiny_model(97, "olmo3", attention, window=8)
    n = 40
    ids = torch.randint(0, 97, (1, n))
    positions = torch.arange(n)[None]
    never = torch.from_numpy(np.full((1, n), np.iinfo(np.int64).max))
    pad = torch.zeros(1, n, dtype=torch.bool)
    masks = model_mask(model, never, pad)
    assert set(masks) == {"full_attention", "sliding_attention"}
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=masks, position_ids=positions).logits
        theirs = model(input_ids=ids, position_ids=positions).logits  # transformers' own causal + sliding masks
    assert (ours - theirs).abs().max() < 1e-5
    schedule = never.clone()
    schedule[0, 5:10] = 20  # tokens 5-9 evicted before query 20
    masks = model_mask(model, schedule, pad)
    if attention == "eager":  # additive masks: 0 where attended
        masks = {k: v == 0 for k, v in masks.items()}
    full, sliding = masks["full_attention"][0, 0], masks["sliding_attention"][0, 0]
    assert full[19, 5] and not full[20, 5] and full[30, 2]  # the Memento rule
    assert not sliding[19, 5] and sliding[19, 12] and not sliding[30, 2]  # ... cut to the 8-token window
    assert torch.equal(sliding, full & (torch.arange(n)[:, None] - torch.arange(n)[None, :] < 8))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(traces, min_size=1, max_size=3), policy=policies, data=st.data())
def test_selective_forgetting_masks_equal_the_reference(qwen, batch, policy, data):
    """Only the blocks in `forget` get restart's recomputation (whatever `policy.restart`): the dense and flex
    masks of `recompute_triggers(..., forget)` equal the engine-simulating reference, padding included."""
    ids, spans, schedule, pad = padded_batch(qwen, batch, policy)
    special = memento_ids(qwen)
    b, n = ids.shape
    forget = [data.draw(st.sets(st.integers(0, max(s.n_blocks - 1, 0)))) for s in spans]
    redo = recompute_triggers(spans, policy, n, forget)
    dense = dense_mask(schedule, pad, policy.restart, redo)
    flex = create_mask(mask_mod(schedule, pad, policy.restart, redo), b, None, n, n, "cpu")
    for row in range(b):
        ref = reference_mask(ids[row], spans[row], special.summary_end, special.block_start, policy, forget[row])
        np.testing.assert_array_equal(dense[row, 0].numpy(), ref, err_msg=f"row {row}, forget {forget[row]}")
    assert torch.equal(flex, dense)


@pytest.mark.parametrize("mode", ["strict", "release"])
@pytest.mark.parametrize("keep", [0, 1])
def test_forgetting_every_block_is_restart_and_none_is_normal_eviction(qwen, keep, mode):
    restart = EvictionPolicy(keep, restart=True, restart_mode=mode)
    _ids, spans, schedule, pad = padded_batch(qwen, [small_trace(3), small_trace(4)], restart)
    n = schedule.shape[1]
    everything = [set(range(s.n_blocks)) for s in spans]
    full = dense_mask(schedule, pad, True, recompute_triggers(spans, restart, n))
    assert torch.equal(dense_mask(schedule, pad, True, recompute_triggers(spans, restart, n, everything)), full)
    if mode == "strict":  # also without the policy's restart flag; nothing forgotten is plain eviction
        plain = EvictionPolicy(keep)
        assert torch.equal(dense_mask(schedule, pad, False, recompute_triggers(spans, plain, n, everything)), full)
        nothing = recompute_triggers(spans, plain, n, [set(), set()])
        assert torch.equal(dense_mask(schedule, pad, False, nothing), dense_mask(schedule, pad))
        some = dense_mask(schedule, pad, False, recompute_triggers(spans, plain, n, [{1}, {0, 2}]))
        assert not torch.equal(some, full) and not torch.equal(some, dense_mask(schedule, pad))


def test_collator_takes_the_blocks_to_forget_per_example(qwen):
    """`Collator(...)(examples, forget=[...])` puts the recomputation triggers in the batch ("redo"), which the
    trainer's and the probe's `model_mask` call reads unchanged."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from memento.core.spans import Kind
    from memento.train.dataset import Collator, build_examples

    examples, _ = build_examples([small_trace(3), small_trace(2)], qwen, 512)
    policy = EvictionPolicy(0)
    assert "redo" not in Collator(0, policy)(examples)
    batch = Collator(0, policy)(examples, forget=[{1}, set()])
    redo = batch["redo"]
    block = torch.from_numpy(examples[0].spans.block)
    memento = (batch["kind"][0, : len(block)] == int(Kind.SUMMARY)) & (block == 1)
    recomputed = redo[0, : len(block)] >= 0  # what follows block 1 up to its eviction: delimiters and memento
    assert recomputed[memento].all() and (block[recomputed] == 1).all() and (redo[1] == -1).all()
    config = LlamaConfig(
        vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    mask = model_mask(LlamaForCausalLM(config), batch["schedule"], batch["pad"], policy.restart, batch.get("redo"))
    assert torch.equal(mask, dense_mask(batch["schedule"], batch["pad"], False, redo))
    with pytest.raises(MementoError, match="2 sets of blocks for 1 sequences"):
        Collator(0, policy)(examples[:1], forget=[{1}, set()])
    with pytest.raises(MementoError, match="forget needs a policy that evicts"):
        Collator(0, None)(examples, forget=[{1}, set()])
    with pytest.raises(MementoError, match="does not cover restart"):
        mask_mod(batch["schedule"], batch["pad"], False, redo, window=8)
