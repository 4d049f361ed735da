"""`memento_sdpa`: SDPA that skips what a Memento mask hides, for training on CPU.

Given an explicit mask, PyTorch's CPU SDPA kernels compute every query-key pair: the causal upper triangle and the
evicted blocks cost as much as what is attended (benchmarks/results/train_step.md: a stage-2 step took up to 1.9x a
causal one at 2K tokens). Here the queries go through SDPA in chunks of `CHUNK`, each against only the keys some
query of the chunk sees: never a later token, never a block evicted before the chunk starts. Each query still sees
exactly the keys its mask row allows, so the output equals one SDPA call under the same mask (tested, values and
gradients; with dropout, equal in distribution).

Registered with transformers as the attention implementation `memento_sdpa` (the training default: `for_model`
hands it the same boolean mask as `sdpa`). Anything else goes to transformers' own SDPA function unchanged: no
mask or a non-boolean one, short sequences, CUDA (where FlexAttention is the sparse path). The name is not saved
in checkpoints: a trained model loads with its usual attention.
"""

from __future__ import annotations

import torch

NAME = "memento_sdpa"
CHUNK = 256


def chunked_sdpa(query, key, value, mask, scale=None, dropout=0.0, chunk: int = CHUNK) -> torch.Tensor:
    """(B, H, Q, D) attention of `query` (B, H, Q, D) over `key` / `value` (B, H, K, D) under `mask` (B, 1, Q, K)
    bool (True = attend; every query sees at least one key), `chunk` queries at a time."""
    out = []
    for start in range(0, query.shape[2], chunk):
        rows = mask[:, :, start : start + chunk]  # (B, 1, c, K)
        keys = rows.any(dim=(0, 1, 2)).nonzero().squeeze(1)  # the union over the batch of what the chunk sees
        out.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start : start + chunk],
                key.index_select(2, keys),
                value.index_select(2, keys),
                attn_mask=rows.index_select(3, keys),
                dropout_p=dropout,
                scale=scale,
            )
        )
    return torch.cat(out, dim=2)


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The transformers attention interface: (B, Q, H, D) output and no weights."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    chunked = (
        attention_mask is not None
        and attention_mask.dtype == torch.bool
        and attention_mask.shape[-2:] == (query.shape[2], key.shape[2])  # one row per query (no broadcasting)
        and query.device.type == "cpu"
        and query.shape[2] > CHUNK
    )
    if not chunked:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = chunked_sdpa(query, key, value, attention_mask, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `memento_sdpa` known to transformers (idempotent); return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
