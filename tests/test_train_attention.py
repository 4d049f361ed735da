"""`memento_sdpa` (chunked SDPA over the keys each chunk sees) equals one SDPA call under the same mask: the kernel
on arbitrary Memento-shaped masks, and a whole model's losses and gradients in training."""

from __future__ import annotations

import torch
from helpers import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from memento.core.policy import EvictionPolicy
from memento.synthetic.sums import sums_traces
from memento.tokenizer import char_tokenizer
from memento.train.attention import CHUNK, chunked_sdpa, register
from memento.train.dataset import Collator, build_examples
from memento.train.losses import token_losses
from memento.train.masks import dense_mask


@st.composite
def masks(draw):
    """A (B, 1, T, T) Memento-rule mask: each key is evicted at some later query or never; right padding."""
    b, n = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    schedule = torch.tensor([[k + 1 + draw(st.integers(0, n)) for k in range(n)] for _ in range(b)], dtype=torch.int64)
    lengths = [draw(st.integers(1, n)) for _ in range(b)]
    pad = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
    return dense_mask(schedule, pad, restart=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(mask=masks(), chunk=st.integers(1, 16))
def test_chunked_equals_one_sdpa_call(mask, chunk):
    b, _, n, _ = mask.shape
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, 2, n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    got = chunked_sdpa(q, k, v, mask, chunk=chunk)
    assert torch.allclose(got, want, atol=1e-10)
    for mine, theirs in zip(torch.autograd.grad(got.square().sum(), (q, k, v)), grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-10)


def _losses_and_grads(model, batch, mask, restart):
    model.zero_grad()
    losses, _ = token_losses(model, batch, mask, restart, "cpu")
    losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_training_with_memento_sdpa_equals_sdpa():
    """Long enough that the chunked path runs (T > CHUNK), with padding, GQA, and both masks."""

    register()
    tokenizer = char_tokenizer()
    traces = sums_traces(3, seed=1, blocks=(4, 5), terms=8)
    examples, _ = build_examples(traces, tokenizer, max_length=4096)
    assert max(len(e.ids) for e in examples) > 2 * CHUNK
    model = tiny_model(len(tokenizer), hidden=32)
    for policy, mask in (
        (EvictionPolicy(0), "memento"),
        (EvictionPolicy(0, restart=True), "memento"),
        (None, "causal"),
    ):
        batch = Collator(0, policy)(examples)
        assert bool(batch["pad"].any()), "the batch is ragged"
        model.set_attn_implementation("sdpa")
        want, want_grads = _losses_and_grads(model, batch, mask, policy is not None and policy.restart)
        model.set_attn_implementation("memento_sdpa")
        got, got_grads = _losses_and_grads(model, batch, mask, policy is not None and policy.restart)
        assert torch.allclose(got, want, atol=1e-5), f"{mask}: losses differ by {float((got - want).abs().max())}"
        for name, grad in got_grads.items():
            assert torch.allclose(grad, want_grads[name], atol=1e-5), f"{mask}: gradient of {name} differs"
