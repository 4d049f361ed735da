"""The reference engine: Memento generation on any Hugging Face causal LM with physical KV eviction.

While tokens are produced (sampled, or forced in teacher forcing), each row's `Labeller` labels them and an
`EvictionTracker` says when a block's KV must go; the block's slots are freed *before* the triggering token is fed
(so `<|summary_end|>` does not see its block) and the cache is compacted. In restart mode (strict forgetting) every
surviving token fed after the first evicted one is then recomputed over what survives, so no retained KV was
computed while the block was visible.

This file holds the mechanics shared by teacher forcing and generation; `generate.py` adds sampling, stopping and
statistics on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memento.engine.cache import SlotCache
from memento.engine.policy import EvictionPolicy, EvictionTracker
from memento.spans import Kind, Labeller, MementoIds


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

        Evictions the new tokens trigger happen first, then restart recomputation, then the forward.
        """
        for r, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if token is None:
                continue
            block = row.add(token)
            if block is not None:
                self.evict(rows, cache, r, block)
        chunk = [[] if t is None else [t] for t in tokens]
        where = [[] if t is None else [len(row.ids) - 1] for row, t in zip(rows, tokens, strict=True)]
        logits = cache.feed(chunk, where, where)[:, -1]
        held = cache.occupancy().tolist()
        for row, token, n in zip(rows, tokens, held, strict=True):
            if token is not None:
                row.kv_timeline.append(int(n))
        return logits

    def evict(self, rows: list[Row], cache: SlotCache, r: int, block: int) -> None:
        row = rows[r]
        gone = row.block_tokens(block)
        freed = cache.free(r, gone)
        row.evicted_tokens += freed
        row.evictions += 1
        if self.policy.restart and freed:
            self.recompute(rows, cache, r, int(gone.min()))
        cache.compact()

    def recompute(self, rows: list[Row], cache: SlotCache, r: int, after: int) -> None:
        """Re-feed row r's surviving tokens with index > `after` (all fed ones but the newest) over the survivors."""
        row = rows[r]
        fed = len(row.ids) - 1  # the newest token is not fed yet
        redo = sorted(int(i) for i in cache.index[r].tolist() if after < i < fed)
        if not redo:
            return
        cache.free(r, torch.tensor(redo))
        cache.compact()
        chunks = [[] for _ in rows]
        chunks[r] = [row.ids[i] for i in redo]
        where = [[] for _ in rows]
        where[r] = redo
        cache.feed(chunks, where, where)

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
