"""A batch of KV caches that forget: per-row slots over a Hugging Face `DynamicCache`, with physical eviction.

Each row of the batch owns a list of slots; a slot holds one token's K/V (every layer) and remembers the token's
logical position and its index in the row's sequence. Freeing tokens marks their slots empty, and `compact` then
moves every row's survivors to the front and cuts the cache to the longest row: the memory is really returned, and
with one row the cache holds exactly the surviving tokens. Keys are cached after RoPE, so survivors keep their
original positions and new tokens continue the logical position count, whatever slot they land in.

Attention goes through an explicit (B, 1, L, S + L) boolean mask (True = attend): a query sees the occupied slots
of its row and the earlier real tokens of its own chunk, so slot order never matters and rows are independent.
"""

from __future__ import annotations

import torch

from memento.errors import MementoError
from memento.train.masks import for_model

EMPTY = -1


class SlotCache:
    def __init__(self, model, batch: int):
        from transformers import DynamicCache

        self.model = model
        self.device = next(model.parameters()).device
        self.kv = DynamicCache(config=model.config)
        self.pos = torch.empty(batch, 0, dtype=torch.long, device=self.device)  # (B, S) logical position, -1 empty
        self.index = torch.empty(batch, 0, dtype=torch.long, device=self.device)  # (B, S) index in the row's sequence

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    @property
    def slots(self) -> int:
        return self.pos.shape[1]

    def occupancy(self) -> torch.Tensor:
        """(B,) tokens held per row."""
        return (self.pos != EMPTY).sum(1)

    def feed(self, tokens: list[list[int]], positions: list[list[int]], indices: list[list[int]]) -> torch.Tensor:
        """Run one forward over a ragged chunk per row (empty lists allowed); return (B, L, V) logits.

        Rows with fewer than L tokens are padded with queries that see only themselves; their slots stay empty.
        """
        b, length = self.batch, max(len(t) for t in tokens)
        if length == 0:
            raise MementoError("feed() got no tokens")
        ids = torch.zeros(b, length, dtype=torch.long)
        pos = torch.zeros(b, length, dtype=torch.long)
        idx = torch.full((b, length), EMPTY, dtype=torch.long)
        real = torch.zeros(b, length, dtype=torch.bool)
        for row, (t, p, i) in enumerate(zip(tokens, positions, indices, strict=True)):
            ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
            pos[row, : len(p)] = torch.tensor(p, dtype=torch.long)
            idx[row, : len(i)] = torch.tensor(i, dtype=torch.long)
            real[row, : len(t)] = True
        ids, pos, idx, real = (x.to(self.device) for x in (ids, pos, idx, real))
        old = (self.pos != EMPTY)[:, None, :].expand(b, length, self.slots)  # (B, L, S)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        new = causal[None] & real[:, None, :]  # (B, L, L)
        new |= torch.eye(length, dtype=torch.bool, device=self.device)[None] & ~real[:, :, None]
        mask = torch.cat([old & real[:, :, None], new], dim=2)[:, None]  # (B, 1, L, S + L)
        mask = for_model(self.model, mask)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=self.kv, use_cache=True)
        self.pos = torch.cat([self.pos, torch.where(real, pos, EMPTY)], dim=1)
        self.index = torch.cat([self.index, torch.where(real, idx, EMPTY)], dim=1)
        if not bool(real.all()):
            self.compact()
        return out.logits

    def free(self, row: int, indices: torch.Tensor) -> int:
        """Empty the slots of `row` holding the sequence indices `indices`; return how many were freed."""
        hit = torch.isin(self.index[row], indices.to(self.device)) & (self.pos[row] != EMPTY)
        self.pos[row, hit] = EMPTY
        self.index[row, hit] = EMPTY
        return int(hit.sum())

    def compact(self) -> None:
        """Move each row's occupied slots to the front (in order) and cut the cache to the longest row."""
        occupied = self.pos != EMPTY  # (B, S)
        keep = int(occupied.sum(1).max()) if self.slots else 0
        order = torch.argsort((~occupied).to(torch.int8), dim=1, stable=True)[:, :keep]  # (B, S')
        self.pos = self.pos.gather(1, order)
        self.index = self.index.gather(1, order)
        empty = self.pos == EMPTY
        for layer in self.kv.layers:
            h, d = layer.keys.shape[1], layer.keys.shape[3]
            where = order[:, None, :, None].expand(-1, h, -1, d)
            layer.keys = layer.keys.gather(2, where).masked_fill_(empty[:, None, :, None], 0.0)
            layer.values = layer.values.gather(2, where).masked_fill_(empty[:, None, :, None], 0.0)

    def check_integrity(self) -> None:
        """Every layer holds one K/V per slot; each row's tokens are unique; empty slots are zero and trailing."""
        for n, layer in enumerate(self.kv.layers):
            if layer.keys.shape[2] != self.slots or layer.values.shape[2] != self.slots:
                raise AssertionError(f"layer {n}: {layer.keys.shape[2]} cached entries for {self.slots} slots")
            empty = self.pos == EMPTY
            if bool(layer.keys.abs().sum(dim=(1, 3)).masked_select(empty).ne(0).any()):
                raise AssertionError(f"layer {n}: an empty slot holds a key")
        for row in range(self.batch):
            live = self.index[row][self.index[row] != EMPTY]
            if len(live) != len(set(live.tolist())):
                raise AssertionError(f"row {row}: a token is cached twice")
            count = len(live)
            if bool((self.pos[row, :count] == EMPTY).any()) and self.slots:
                raise AssertionError(f"row {row}: an empty slot before an occupied one")
