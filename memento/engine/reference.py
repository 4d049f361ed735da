"""The reference engine: Memento generation on any Hugging Face causal LM with physical KV eviction.

While tokens are produced (sampled, or forced in teacher forcing), each row's `Labeller` labels them and an
`EvictionTracker` says when a block's KV must go; the block's slots are freed *before* the triggering token is fed
(so `<|summary_end|>` does not see its block) and the cache is compacted. In restart mode the tokens that saw the
block are then recomputed over what survives (strict: every surviving token fed after it; the release's mode: the
newest memento only); they are fed again in the same forward as the row's next token. With a `forget` rule
(selective strict forgetting) only the blocks it flags are recomputed that way.

This file holds the mechanics shared by teacher forcing and generation; `batch.py` adds sampling, stopping, refill
and statistics on top (token ids only), `generate.py` the chat template and the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memento.core.policy import EvictionPolicy, EvictionTracker, Forget
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
    forgotten: int = 0  # evictions whose survivors were recomputed without the block (restart / `forget`)
    kv_timeline: list[int] = field(default_factory=list)  # tokens held after each fed token
    sliding_timeline: list[int] = field(default_factory=list)  # ... by the sliding-window layers (hybrid models)
    request: int = 0  # which request of a batch call the row serves
    prompt_evictions: list[tuple[int, int]] = field(default_factory=list)  # (trigger, block) inside the prompt
    prefill_steps: int = 1  # forwards that fed the prompt (entries of the timelines before the first generated token)
    forget: Forget | None = None  # selective strict forgetting: which evicted blocks get restart's recomputation

    @classmethod
    def start(
        cls, prompt: list[int], special: MementoIds, policy: EvictionPolicy, request: int = 0, forget=None
    ) -> Row:
        """A row holding `prompt`, labelled as prompt; with `policy.compact_prompt`, labelled like generated tokens
        (every turn of a multi-turn chat), so the blocks of earlier assistant turns are evicted as the prompt is
        fed (`prompt_evictions`: each block to evict before feeding the token at `trigger`). `forget`: the
        request's selective-forgetting rule (`memento.core.policy.forgetter`), None: the policy's restart."""
        n = len(prompt)
        labeller = Labeller(special, strict=False, turns=policy.compact_prompt)
        row = cls([], n, labeller, EvictionTracker(policy, special), request=request, forget=forget)
        if not policy.compact_prompt:
            row.ids, row.kind, row.block = list(prompt), [int(Kind.PROMPT)] * n, [-1] * n
            return row
        for t, token in enumerate(prompt):
            block = row.add(token)
            if block is not None and len(row.block_tokens(block)):
                row.prompt_evictions.append((t, block))
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

    def recompute_from(self, block: int, trigger: int, first_gone: int) -> int | None:
        """Where the KV recomputed at the eviction of `block` (triggered at `trigger`) starts, None: nothing is
        (`EvictionPolicy.recompute_from`; with a `forget` rule, only for the blocks whose content it flags)."""
        restart = None
        if self.forget is not None:
            labels = zip(self.ids, self.kind, self.block, strict=True)
            restart = self.forget([t for t, k, b in labels if b == block and k == Kind.BLOCK])
        start = self.tracker.policy.recompute_from(self.kind, trigger, first_gone, restart)
        self.forgotten += start is not None
        return start


class Decoder:
    """Rows in the slots of one `SlotCache`, fed together: `start` a prompt in a slot, `push` a row's next token
    (evicting first when it closes a memento), `forward` every pending token in one batched call, `finish` a row.
    Generation (`memento.engine.batch`) and teacher forcing run on these same steps."""

    def __init__(self, model, special: MementoIds, policy: EvictionPolicy, slots: int = 1, forget=None):
        self.model = model
        self.special = special
        self.policy = policy
        self.forget: Forget | None = forget  # every row's selective-forgetting rule (`Row.forget`)
        self.cache = SlotCache(model, slots)
        self.movable = set(int(k) for k in policy.owned) if policy.evicts else set()  # kinds eviction may take
        self.rows: list[Row | None] = [None] * slots
        self.pending: list[list[int]] = [[] for _ in range(slots)]  # sequence indices to feed, per slot
        self.keep_prefill = False  # teacher forcing keeps the logits of every prompt token:
        self.prefilled: dict[int, list[torch.Tensor]] = {}  # per slot: logits of prompt parts fed by `start`
        self.prefill_redo: dict[int, int] = {}  # per slot: recomputed tokens ahead of the prompt's last part

    def start(self, slot: int, prompt: list[int], request: int = 0) -> Row:
        """Put a new row in `slot`: its prompt is fed at the next `forward`. A prompt holding blocks to compact is
        fed up to each eviction now (a forward of this row alone per eviction, logits kept in `prefilled`), the
        block evicted before the rest is fed; its last part waits for the next `forward`."""
        row = self.rows[slot] = Row.start(prompt, self.special, self.policy, request, self.forget)
        fed, redo = 0, []
        for trigger, block in row.prompt_evictions:
            chunk = [*redo, *range(fed, trigger)]
            if chunk:
                logits = self._feed_alone(slot, chunk)
                row.prefill_steps += 1
                if self.keep_prefill:
                    self.prefilled.setdefault(slot, []).append(logits[len(redo) :])
            redo, fed = self.evict(slot, block, trigger), trigger
        self.pending[slot] = [*redo, *range(fed, len(prompt))]
        if self.keep_prefill:
            self.prefill_redo[slot] = len(redo)
        return row

    def _feed_alone(self, slot: int, chunk: list[int]) -> torch.Tensor:
        """Feed `chunk` (sequence indices) of one row, the other rows waiting; return its (len(chunk), V) logits."""
        row = self.rows[slot]
        indices = [chunk if s == slot else [] for s in range(len(self.rows))]
        tokens = [[row.ids[i] for i in c] for c in indices]
        movable = [[row.kind[i] in self.movable for i in c] for c in indices]
        logits = self.cache.feed(tokens, indices, indices, movable)[slot, : len(chunk)]
        self._record(slot)
        return logits

    def _record(self, slot: int) -> None:
        row = self.rows[slot]
        row.kv_timeline.append(int(self.cache.occupancy()[slot]))
        sliding = self.cache.sliding_occupancy()
        if sliding is not None:
            row.sliding_timeline.append(int(sliding[slot]))

    def push(self, slot: int, token: int) -> None:
        """Append the row's next token, to be fed at the next `forward`."""
        self.schedule(slot, self.rows[slot].add(token))

    def schedule(self, slot: int, block: int | None) -> None:
        """Queue the row's newest token (already added to it) for the next `forward`. When it closed a memento
        (`block`: the block to evict, from `Row.add`) the block's slots are freed now, before the token is fed; in
        restart mode the tokens to recompute are fed again in the same forward, ahead of the new token."""
        row = self.rows[slot]
        redo = self.evict(slot, block) if block is not None else []
        self.pending[slot] = [*redo, len(row.ids) - 1]

    def forward(self) -> torch.Tensor:
        """Feed every row's pending tokens in one forward; return (slots, L, V) logits (a row's last fed token at
        `fed[slot] - 1`) and record each fed row's KV occupancy."""
        rows = list(zip(self.rows, self.pending, strict=True))
        chunks = [[row.ids[i] for i in p] if row else [] for row, p in rows]
        movable = [[row.kind[i] in self.movable for i in p] if row else [] for row, p in rows]
        logits = self.cache.feed(chunks, self.pending, self.pending, movable)
        for slot, chunk in enumerate(chunks):
            if chunk:
                self._record(slot)
        self.fed = [len(c) for c in chunks]
        self.pending = [[] for _ in self.rows]
        return logits

    def last_logits(self, logits: torch.Tensor, slot: int) -> torch.Tensor:
        """(V,) logits after `slot`'s last fed token."""
        return logits[slot, self.fed[slot] - 1]

    def finish(self, slot: int) -> Row:
        """Free the row's KV and empty its slot; return the row."""
        row = self.rows[slot]
        self.cache.free(slot, torch.arange(len(row.ids)))
        self.rows[slot], self.pending[slot] = None, []
        return row

    def settle(self) -> None:
        """Between forwards: empty slots leave the batch (their memory with them), else freed slots are compacted."""
        keep = [s for s, row in enumerate(self.rows) if row is not None]
        if keep and len(keep) < len(self.rows):
            self.cache.drop_rows(keep)
            self.rows = [self.rows[s] for s in keep]
            self.pending = [self.pending[s] for s in keep]
        elif len(keep) == len(self.rows):
            self.cache.compact()

    def evict(self, slot: int, block: int, trigger: int | None = None) -> list[int]:
        """Free the row's `block`. Restart mode also frees the surviving tokens to recompute (strict: every one fed
        after the block's first token; release: the newest memento's, `Row.recompute_from`) and returns
        their indices: `push` feeds them again, in order and before the row's new token, so their KV is recomputed
        over what survives (one forward for the whole batch, not one per eviction). `trigger`: the token not to see
        the block (default: the row's newest, not fed yet)."""
        row = self.rows[slot]
        gone = row.block_tokens(block)
        freed = self.cache.free(slot, gone)
        row.evicted_tokens += freed
        row.evictions += 1
        fed = len(row.ids) - 1 if trigger is None else trigger  # the trigger is not fed yet
        start = row.recompute_from(block, fed, int(gone.min())) if freed else None
        if start is None:
            return []
        redo = sorted(int(i) for i in self.cache.index[slot].tolist() if start <= i < fed)
        if redo:
            self.cache.free(slot, torch.tensor(redo))
        return redo


@torch.no_grad()
def teacher_force(
    model,
    special: MementoIds,
    policy: EvictionPolicy,
    ids: list[int],
    completion_start: int,
    check: bool = False,
    forget: Forget | None = None,
) -> tuple[torch.Tensor, Decoder]:
    """(T, V) logits of a fixed sequence decoded with eviction (row t: what generation computes at token t), and the
    decoder holding its final cache. The prompt (ids[:completion_start]) is prefilled at once, every later token fed
    one by one; `check`: verify the cache's integrity after every step; `forget`: selective strict forgetting."""
    decoder = Decoder(model, special, policy, forget=forget)
    decoder.keep_prefill = True
    decoder.start(0, ids[:completion_start])
    out = [*decoder.prefilled.pop(0, []), decoder.forward()[0][decoder.prefill_redo.pop(0, 0) :]]
    for token in ids[completion_start:]:
        decoder.push(0, token)
        decoder.settle()
        out.append(decoder.last_logits(decoder.forward(), 0)[None])
        if check:
            decoder.cache.check_integrity()
    return torch.cat(out), decoder
