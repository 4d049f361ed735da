"""A boolean attention mask in the form a model's attention implementation reads correctly.

Shared by training (`memento.train.masks`) and the reference engine's cache (`memento.engine.cache`), which both
hand transformers an explicit (B, 1, Q, K) mask.
"""

from __future__ import annotations

import torch

from memento.core.errors import MementoError


def for_model(model, mask: torch.Tensor) -> torch.Tensor:
    """A boolean (B, 1, Q, K) mask (True = attend) as `model` must receive it.

    sdpa and `memento_sdpa` (see `attention.py`) take booleans; eager *adds* its mask to the scores, so a boolean
    would be silently misread (True becomes +1, nothing is masked): it gets 0 / dtype-min instead.
    """
    impl = attention_implementation(model)
    if impl in ("sdpa", "memento_sdpa"):
        return mask
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    raise MementoError(f"attention implementation '{impl}' cannot take a dense Memento mask; use sdpa or eager")


def attention_implementation(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def sliding_window(model) -> int | None:
    """The window of a model whose layers mix full and sliding-window attention (OLMo-3: 24 of 32 layers slide over
    4,096 tokens), read from `layer_types`; None when every layer attends fully."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) if "sliding_attention" in types else None


def within_window(mask: torch.Tensor, window: int) -> torch.Tensor:
    """`mask` (B, 1, Q, K) restricted to the keys a sliding-window layer sees: the query's `window` newest visible
    tokens (itself included). The window counts the tokens the cache *holds*, not positions: after an eviction the
    survivors slide closer, as in a compacted paged cache read by a windowed kernel (vLLM; the paper's release).
    With nothing evicted this is the usual `q - k < window`."""
    held_from = mask.flip(-1).cumsum(-1, dtype=torch.int32).flip(-1)  # visible keys at or after each key
    return mask & (held_from <= window)
