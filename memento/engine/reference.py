"""The reference engine: Memento generation on any Hugging Face causal LM with physical KV eviction.

While tokens are produced (sampled, or forced in teacher forcing), each row's `Labeller` labels them and an
`EvictionTracker` says when a block's KV must go; the block's slots are freed *before* the triggering token is fed
(so `<|summary_end|>` does not see its block) and the cache is compacted. In restart mode (strict forgetting) every
surviving token fed after the first evicted one is then recomputed over what survives, so no retained KV was
computed while the block was visible; those tokens are fed again in the same forward as the row's next token.

This file holds the mechanics shared by teacher forcing and generation; `generate.py` adds sampling, stopping and
statistics on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memento.core.policy import EvictionPolicy, EvictionTracker
from memento.core.spans import Kind, Labeller, MementoIds
from memento.engine.cache import SlotCache


@dataclass
class Row:
    """One sequence being decoded: its tokens, their labels and logical positions, and its eviction record."""

    ids: list[int]
    completion_start: int
    labeller: Labeller
    tracker: EvictionTracker
    kind: list[int] = field(default_factory=list)
    block: list[int] = field(default_factory=list)
    evicted_tokens: int = 0
    evictions: int = 0
    kv_timeline: list[int] = field(default_factory=list)  # tokens held after each fed token

    @classmethod
    def start(cls, prompt: list[int], special: MementoIds, policy: EvictionPolicy) -> Row:
        n = len(prompt)
        row = cls(list(prompt), n, Labeller(special, strict=False), EvictionTracker(policy, special))
        row.kind, row.block = [int(Kind.PROMPT)] * n, [-1] * n
        return row

    def add(self, token: int) -> int | None:
        """Append a token (not yet fed); return the block to evict before feeding it, or None."""
        t = len(self.ids)
        kind, block = self.labeller.push(token, t)
        self.ids.append(int(token))
        self.kind.append(int(kind))
        self.block.append(int(block))
        return self.tracker.on_token(token, kind, block)

    def block_tokens(self, block: int) -> torch.Tensor:
        owned = self.tracker.owned
        return torch.tensor(
            [i for i, (k, b) in enumerate(zip(self.kind, self.block, strict=True)) if b == block and k in owned],
            dtype=torch.long,
        )


class Decoder:
    """Feeds rows through a `SlotCache`, evicting (and in restart mode recomputing) as the policy says."""

    def __init__(self, model, special: MementoIds, policy: EvictionPolicy):
        self.model = model
        self.special = special
        self.policy = policy

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[list[Row], SlotCache, torch.Tensor]:
        """Start rows on their prompts; return them, the cache and the (B, L, V) logits of the prompts."""
        rows = [Row.start(p, self.special, self.policy) for p in prompts]
        cache = SlotCache(self.model, len(rows))
        where = [list(range(len(p))) for p in prompts]
        logits = cache.feed(prompts, where, where)
        for row in rows:
            row.kv_timeline.append(len(row.ids))
        return rows, cache, logits

    @torch.no_grad()
    def step(self, rows: list[Row], cache: SlotCache, tokens: list[int | None]) -> torch.Tensor:
        """Feed one token per row (None: the row is done and feeds nothing); return (B, V) logits.

        Evictions the new tokens trigger happen first; in restart mode the tokens to recompute go into the same
        forward, ahead of the new token.
        """
        chunks: list[list[int]] = [[] for _ in rows]
        where: list[list[int]] = [[] for _ in rows]
        for r, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if token is None:
                continue
            block = row.add(token)
            redo = self.evict(rows, cache, r, block) if block is not None else []
            chunks[r] = [row.ids[i] for i in redo] + [token]
            where[r] = [*redo, len(row.ids) - 1]
        cache.compact()
        logits = cache.feed(chunks, where, where)
        held = cache.occupancy().tolist()
        for row, chunk, n in zip(rows, chunks, held, strict=True):
            if chunk:
                row.kv_timeline.append(int(n))
        return torch.stack([logits[r, max(len(c), 1) - 1] for r, c in enumerate(chunks)])

    def evict(self, rows: list[Row], cache: SlotCache, r: int, block: int) -> list[int]:
        """Free row r's `block`. Restart mode also frees every surviving token fed after the block's first token and
        returns their indices: the caller feeds them again, in order and before the row's new token, so their KV is
        recomputed over what survives (one forward for the whole batch, not one per eviction)."""
        row = rows[r]
        gone = row.block_tokens(block)
        freed = cache.free(r, gone)
        row.evicted_tokens += freed
        row.evictions += 1
        if not (self.policy.restart and freed):
            return []
        after, fed = int(gone.min()), len(row.ids) - 1  # the newest token is not fed yet
        redo = sorted(int(i) for i in cache.index[r].tolist() if after < i < fed)
        if redo:
            cache.free(r, torch.tensor(redo))
        return redo

    @torch.no_grad()
    def teacher_force(self, ids: list[int], completion_start: int) -> torch.Tensor:
        """(T, V) logits of a fixed sequence decoded with eviction: row t is what generation computes at token t.

        The prompt (ids[:completion_start]) is prefilled at once; every later token is fed one by one.
        """
        rows, cache, logits = self.prefill([ids[:completion_start]])
        out = [logits[0]]
        for token in ids[completion_start:]:
            out.append(self.step(rows, cache, [token]))
        self.last = (rows, cache)
        return torch.cat(out)
