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

from memento.core.errors import MementoError
from memento.core.mask import for_model

EMPTY = -1


def _pool_layer():
    """A `DynamicLayer` over a preallocated buffer that doubles when full, so appending a token copies that token
    only (HF's layer concatenates, copying the whole cache at every step)."""
    from transformers.cache_utils import DynamicLayer

    class PoolLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.length, self.buffers = 0, None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[2]
            self._reserve(key_states, end)
            self.buffers[0][:, :, self.length : end] = key_states
            self.buffers[1][:, :, self.length : end] = value_states
            self._expose(end)
            return self.keys, self.values

        def replace(self, keys, values) -> None:
            """Hold exactly `keys` / `values` (B, H, S, D) from now on (after compaction or dropping rows)."""
            self._reserve(keys, keys.shape[2], keep=False)
            self.buffers[0][:, :, : keys.shape[2]] = keys
            self.buffers[1][:, :, : keys.shape[2]] = values
            self._expose(keys.shape[2])

        def _reserve(self, like, end: int, keep: bool = True) -> None:
            b, h, _, d = like.shape
            if self.buffers is not None and self.buffers[0].shape[0] == b and end <= self.buffers[0].shape[2]:
                return
            size = max(64, 2 * end)  # room to grow: appends stay amortised O(1)
            fresh = [like.new_zeros(b, h, size, d) for _ in range(2)]
            if keep and self.buffers is not None:
                for new, old in zip(fresh, self.buffers, strict=True):
                    new[:, :, : self.length] = old[:, :, : self.length]
            self.buffers = fresh

        def _expose(self, end: int) -> None:
            self.length = end
            self.keys, self.values = self.buffers[0][:, :, :end], self.buffers[1][:, :, :end]

    return PoolLayer


class _Group:
    """The slots of the layers that hold the same tokens: all of them, or (hybrid models) the full-attention layers
    and the sliding-window layers apart (the latter hold a suffix of the former's tokens, see `SlotCache.trim`)."""

    def __init__(self, layers: list, window: int | None, batch: int, device):
        self.layers, self.window = layers, window
        self.pos = torch.empty(batch, 0, dtype=torch.long, device=device)  # (B, S) logical position, -1 empty
        self.index = torch.empty(batch, 0, dtype=torch.long, device=device)  # (B, S) index in the row's sequence
        self.movable = torch.empty(batch, 0, dtype=torch.bool, device=device)  # (B, S) may still be evicted
        self.dirty = False  # slots were emptied since the last compaction

    def free(self, hit: torch.Tensor) -> int:
        """Empty the slots where `hit` (B, S) is True; return how many."""
        self.pos[hit] = EMPTY
        self.index[hit] = EMPTY
        self.movable[hit] = False
        self.dirty = True
        return int(hit.sum())

    def compact(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        occupied = self.pos != EMPTY  # (B, S)
        keep = int(occupied.sum(1).max()) if self.pos.shape[1] else 0
        order = torch.argsort((~occupied).to(torch.int8), dim=1, stable=True)[:, :keep]  # (B, S')
        self.pos = self.pos.gather(1, order)
        self.index = self.index.gather(1, order)
        self.movable = self.movable.gather(1, order)
        empty = (self.pos == EMPTY)[:, None, :, None]
        for layer in self.layers:
            h, d = layer.keys.shape[1], layer.keys.shape[3]
            where = order[:, None, :, None].expand(-1, h, -1, d)
            keys = layer.keys.gather(2, where).masked_fill_(empty, 0.0)
            layer.replace(keys, layer.values.gather(2, where).masked_fill_(empty, 0.0))


def _held_after(full: _Group, index: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) per slot index in `index` (B, S): how many tokens the full-attention layers hold after it (and before
    `before` (B,), when given)."""
    big = torch.iinfo(torch.long).max
    held = torch.where(full.index != EMPTY, full.index, big).sort(dim=1).values  # empty slots sort last
    end = (full.index != EMPTY).sum(1, keepdim=True)
    if before is not None:
        end = torch.searchsorted(held, before[:, None].contiguous())
    return (end - torch.searchsorted(held, index.contiguous(), right=True)).clamp(min=0)


class SlotCache:
    def __init__(self, model, batch: int):
        from transformers import DynamicCache

        from memento.core.mask import sliding_window

        self.model = model
        self.device = next(model.parameters()).device
        self.kv = DynamicCache(config=model.config)
        self.window = sliding_window(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        types = getattr(config, "layer_types", None) or ["full_attention"] * len(self.kv.layers)
        if self.window is None and any(type(layer).__name__ != "DynamicLayer" for layer in self.kv.layers):
            raise MementoError("the reference engine supports full and sliding-window attention layers only")
        layer = _pool_layer()
        self.kv.layers = [layer() for _ in self.kv.layers]
        full = [kv for kv, t in zip(self.kv.layers, types, strict=True) if t != "sliding_attention"]
        sliding = [kv for kv, t in zip(self.kv.layers, types, strict=True) if t == "sliding_attention"]
        self.full = _Group(full, None, batch, self.device)
        self.sliding = _Group(sliding, self.window, batch, self.device) if sliding else None
        self.groups = [g for g in (self.full, self.sliding) if g is not None]

    @property
    def pos(self) -> torch.Tensor:
        """(B, S) logical position of each slot of the full-attention layers (-1: empty)."""
        return self.full.pos

    @property
    def index(self) -> torch.Tensor:
        """(B, S) sequence index of each slot of the full-attention layers (-1: empty)."""
        return self.full.index

    @property
    def dirty(self) -> bool:
        return any(g.dirty for g in self.groups)

    @property
    def batch(self) -> int:
        return self.full.pos.shape[0]

    @property
    def slots(self) -> int:
        return self.full.pos.shape[1]

    def occupancy(self) -> torch.Tensor:
        """(B,) tokens held per row (by the full-attention layers)."""
        return (self.full.pos != EMPTY).sum(1)

    def sliding_occupancy(self) -> torch.Tensor | None:
        """(B,) tokens held per row by the sliding-window layers (None: the model has none): the window's worth of
        tokens held for good, and every later one (`trim`)."""
        return None if self.sliding is None else (self.sliding.pos != EMPTY).sum(1)

    def feed(
        self,
        tokens: list[list[int]],
        positions: list[list[int]],
        indices: list[list[int]],
        movable: list[list[bool]] | None = None,
    ) -> torch.Tensor:
        """Run one forward over a ragged chunk per row (empty lists allowed); return (B, L, V) logits. `movable`:
        per token, whether it may still be evicted (a block's), which the sliding-window layers must know to forget
        safely (`trim`); default: none may.

        Rows with fewer than L tokens are padded with queries that see only themselves; their slots stay empty.
        """
        b, length = self.batch, max(len(t) for t in tokens)
        if length == 0:
            raise MementoError("feed() got no tokens")
        ids = torch.zeros(b, length, dtype=torch.long)
        pos = torch.zeros(b, length, dtype=torch.long)
        idx = torch.full((b, length), EMPTY, dtype=torch.long)
        real = torch.zeros(b, length, dtype=torch.bool)
        move = torch.zeros(b, length, dtype=torch.bool)
        for row, (t, p, i) in enumerate(zip(tokens, positions, indices, strict=True)):
            ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
            pos[row, : len(p)] = torch.tensor(p, dtype=torch.long)
            idx[row, : len(i)] = torch.tensor(i, dtype=torch.long)
            real[row, : len(t)] = True
            if movable is not None:
                move[row, : len(t)] = torch.tensor(movable[row], dtype=torch.bool)
        ids, pos, idx, real, move = (x.to(self.device) for x in (ids, pos, idx, real, move))
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        new = causal[None] & real[:, None, :]  # (B, L, L)
        pad_self = torch.eye(length, dtype=torch.bool, device=self.device)[None] & ~real[:, :, None]
        masks = {}
        for group in self.groups:
            old = (group.pos != EMPTY)[:, None, :] & real[:, :, None]  # (B, L, S)
            chunk = new
            if group.window is not None:  # the window counts held tokens: the query's w newest, itself included
                rank = torch.arange(length, device=self.device)
                later = _held_after(self.full, group.index)  # (B, S) held tokens after each slot
                old = old & (later[:, None, :] + rank[None, :, None] + 1 < group.window)
                chunk = chunk & (rank[:, None] - rank[None, :] < group.window)[None]
            mask = torch.cat([old, chunk | pad_self], dim=2)[:, None]  # (B, 1, L, S + L)
            masks["full_attention" if group is self.full else "sliding_attention"] = for_model(self.model, mask)
        mask = masks if self.sliding is not None else masks["full_attention"]
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=self.kv, use_cache=True)
        for group in self.groups:
            group.pos = torch.cat([group.pos, torch.where(real, pos, EMPTY)], dim=1)
            group.index = torch.cat([group.index, torch.where(real, idx, EMPTY)], dim=1)
            group.movable = torch.cat([group.movable, move & real], dim=1)
            if not bool(real.all()):  # padding queries left slots behind
                group.dirty = True
        self.trim()
        self.compact()
        return out.logits

    def settled(self) -> torch.Tensor:
        """(B,) per row, the sequence index of the oldest token held that may still be evicted (none: past the
        newest). The tokens held before it stay for good: no eviction or recomputation reaches them."""
        full = self.full
        big = torch.iinfo(torch.long).max
        return torch.where(full.movable, full.index, big).min(dim=1).values if full.pos.shape[1] else None

    def trim(self) -> None:
        """Let the sliding-window layers forget every token that no later query's window can reach: one with
        `window` or more tokens held for good after it. (A token fewer behind may come back into a window when a
        block between is evicted, as the window counts held tokens.)"""
        group = self.sliding
        if group is None or not group.pos.shape[1]:
            return
        gone = (group.pos != EMPTY) & (_held_after(self.full, group.index, self.settled()) >= group.window)
        if bool(gone.any()):
            group.free(gone)

    def free(self, row: int, indices: torch.Tensor) -> int:
        """Empty the slots of `row` holding the sequence indices `indices`; return how many the full-attention layers
        freed."""
        freed = []
        for group in self.groups:  # the full-attention group first
            hit = torch.zeros_like(group.pos, dtype=torch.bool)
            hit[row] = torch.isin(group.index[row], indices.to(self.device)) & (group.pos[row] != EMPTY)
            freed.append(group.free(hit))
        return freed[0]

    def compact(self) -> None:
        """Move each row's occupied slots to the front (in order) and cut the cache to the longest row, per group.

        Between compactions, shorter rows of a batch keep empty (zero, masked) slots up to the longest row.
        """
        for group in self.groups:
            group.compact()

    def drop_rows(self, keep: list[int]) -> None:
        """Keep only the rows `keep` (finished requests leave the batch, and their memory with them)."""
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        for group in self.groups:
            group.pos, group.index, group.movable = group.pos[rows], group.index[rows], group.movable[rows]
            for layer in group.layers:
                if layer.is_initialized:
                    layer.replace(layer.keys[rows], layer.values[rows])
            group.dirty = True
        self.compact()

    def check_integrity(self) -> None:
        """Every layer holds one K/V per slot of its group, empty slots are zero (nothing freed lingers), no token is
        cached twice, after a compaction the longest row has no empty slot, and sliding-window layers hold every
        token the next query's window reaches and none that no later window can."""
        for g, group in enumerate(self.groups):
            empty = group.pos == EMPTY
            slots = group.pos.shape[1]
            for n, layer in enumerate(group.layers):
                if layer.keys.shape[2] != slots or layer.values.shape[2] != slots:
                    raise AssertionError(f"group {g} layer {n}: {layer.keys.shape[2]} cached entries for {slots} slots")
                for name, tensor in (("key", layer.keys), ("value", layer.values)):
                    if bool(tensor.abs().sum(dim=(1, 3)).masked_select(empty).ne(0).any()):
                        raise AssertionError(f"group {g} layer {n}: an empty slot holds a {name}")
            for row in range(self.batch):
                live = group.index[row][group.index[row] != EMPTY].tolist()
                if len(live) != len(set(live)):
                    raise AssertionError(f"group {g} row {row}: a token is cached twice")
            if not group.dirty and slots and int((~empty).sum(1).max()) != slots:
                raise AssertionError(f"group {g}: compacted, yet no row fills the cache")
            if group.window is not None and slots:
                held = group.pos != EMPTY
                if bool((held & (_held_after(self.full, group.index, self.settled()) >= group.window)).any()):
                    raise AssertionError(f"group {g}: a token no later window can reach is still cached")
                reach = (self.full.pos != EMPTY) & (_held_after(self.full, self.full.index) + 1 < group.window)
                for row in range(self.batch):
                    need = set(self.full.index[row][reach[row]].tolist())
                    if not need <= set(group.index[row][held[row]].tolist()):
                        raise AssertionError(f"group {g} row {row}: a token the next query's window reaches is gone")
