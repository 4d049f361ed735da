"""Sampling settings and the next-token choice: greedy, temperature, top-k, top-p, per-request seeds.

Each request draws from its own `torch.Generator`, so a seed gives the same output whatever else is in the batch.
`forget` travels here too, because it is chosen per request like the rest (not per engine, like the policy): a
regular expression; a block whose decoded content it matches (`re.search`, when the block is evicted) is forgotten
strictly (restart's recomputation, in the policy's `restart_mode`), the others are evicted normally. Set, it applies
whether or not the policy has `restart` (`memento.core.policy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memento.core.errors import MementoError
from memento.core.policy import forget_pattern


@dataclass(frozen=True, slots=True)
class Sampling:
    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings (the text up to them is kept)
    forget: str | None = None  # selective strict forgetting: a regular expression on a block's text

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise MementoError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise MementoError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MementoError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise MementoError(f"top_k must be >= 0, got {self.top_k}")
        if self.forget is not None:
            forget_pattern(self.forget)

    def generator(self, index: int = 0) -> torch.Generator | None:
        """The request's random stream (seed + its index in the call), None when greedy."""
        if self.temperature == 0:
            return None
        seed = self.seed if self.seed is not None else torch.seed()
        return torch.Generator().manual_seed(seed + index)


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from (V,) logits."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    scores = logits.float().cpu() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(scores, min(sampling.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1:
        ordered, order = scores.sort(descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= sampling.top_p  # keep the smallest prefix reaching top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
