"""Token ids -> one label per token: the single source of truth for masks, eviction and KV accounting.

`label` runs the grammar of `format.py` over token ids. Every token gets a `Kind` and, for block and memento
tokens, the index of its block (0-based). The training mask, the engines, the KV simulator and the probes all
derive their view of a sequence from these labels and one `EvictionPolicy`.

Design choices:
- Where the reasoning turn starts: by default at the last `<think>` of the sequence, so earlier turns of a chat are
  prompt; pass `completion_start` when you know it (tokens before it are prompt).
- Tokens between structural tokens (the newline after `<|block_end|>` or `<|summary_end|>`) carry the label and
  index of the structural token before them, so they live and die with it.
- A prefix still being generated is labelled as far as it goes; `Spans.state` says what is open.
- `strict=True` raises `TraceFormatError` naming the token index; `strict=False` (for model output) labels an
  out-of-place special token as content of the current state and records it in `issues`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from memento.core.errors import TraceFormatError
from memento.core.format import (
    BLOCK_END,
    BLOCK_START,
    CONTENT_STATES,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
    TRANSITIONS,
    State,
    transition_error,
)


class Kind(IntEnum):
    PAD = 0
    PROMPT = 1
    THINK_START = 2
    BLOCK_START = 3
    BLOCK = 4
    BLOCK_END = 5
    SUMMARY_START = 6
    SUMMARY = 7
    SUMMARY_END = 8
    THINK_END = 9
    ANSWER = 10


_STRUCTURAL_KIND = {
    THINK_START: Kind.THINK_START,
    BLOCK_START: Kind.BLOCK_START,
    BLOCK_END: Kind.BLOCK_END,
    SUMMARY_START: Kind.SUMMARY_START,
    SUMMARY_END: Kind.SUMMARY_END,
    THINK_END: Kind.THINK_END,
}
_CONTENT_KIND = {
    State.OUTSIDE: Kind.PROMPT,
    State.BLOCK: Kind.BLOCK,
    State.MEMENTO: Kind.SUMMARY,
    State.ANSWER: Kind.ANSWER,
}


@dataclass(frozen=True, slots=True)
class MementoIds:
    """The token ids of the six special tokens in one tokenizer (see `tokenizer.memento_ids`)."""

    think_start: int
    think_end: int
    block_start: int
    block_end: int
    summary_start: int
    summary_end: int

    def by_id(self) -> dict[int, str]:
        return {
            self.think_start: THINK_START,
            self.think_end: THINK_END,
            self.block_start: BLOCK_START,
            self.block_end: BLOCK_END,
            self.summary_start: SUMMARY_START,
            self.summary_end: SUMMARY_END,
        }


class Issue(NamedTuple):
    """An out-of-place special token met in lenient mode."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Spans:
    kind: np.ndarray  # (T,) int8, a Kind per token
    block: np.ndarray  # (T,) int32, block index of BLOCK_* / SUMMARY_* tokens, -1 elsewhere
    state: State  # where the grammar stopped: State.ANSWER once </think> was read
    issues: tuple[Issue, ...] = ()

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def n_blocks(self) -> int:
        """Blocks opened so far (the last one may still be open in a generation prefix)."""
        return int(self.block.max(initial=-1)) + 1

    @property
    def complete(self) -> bool:
        return self.state is State.ANSWER

    def count(self, kind: Kind) -> np.ndarray:
        """(n_blocks,) number of tokens of `kind` per block, e.g. `count(Kind.BLOCK)` = block lengths."""
        sel = self.kind == kind
        return np.bincount(self.block[sel], minlength=self.n_blocks)[: self.n_blocks]

    def first(self, kind: Kind) -> np.ndarray:
        """(n_blocks,) index of the first token of `kind` per block; -1 where the block has none (yet)."""
        out = np.full(self.n_blocks, len(self), dtype=np.int64)
        idx = np.flatnonzero(self.kind == kind)
        np.minimum.at(out, self.block[idx], idx)
        out[out == len(self)] = -1
        return out


class Labeller:
    """Labels a token stream one token at a time (what `label` runs, and what the engines run while generating)."""

    def __init__(self, special: MementoIds, strict: bool = True, turns: bool = False):
        self.by_id = special.by_id()
        self.strict = strict
        self.turns = turns  # a chat of several assistant turns: `<think>` outside thinking opens the next one
        self.state = State.OUTSIDE
        self.index = -1  # current block
        self.glue: tuple[Kind, int] = (Kind.PROMPT, -1)
        self.issues: list[Issue] = []

    def push(self, token_id: int, t: int) -> tuple[Kind, int]:
        """(kind, block index or -1) of the token `token_id` at sequence index `t`."""
        state = self.state
        token = self.by_id.get(int(token_id))
        nxt = None if token is None else TRANSITIONS.get((state, token))
        if nxt is None and self.turns and token == THINK_START and state is not State.THINK:
            nxt = State.THINK  # the next turn (an earlier one may have stopped anywhere, even inside a block)
        if token is not None and nxt is None:
            if self.strict:
                raise TraceFormatError(transition_error(state, token), t, unit="token")
            self.issues.append(Issue(t, transition_error(state, token)))
        if nxt is None:  # content, or glue between structural tokens
            if state in CONTENT_STATES or state is State.OUTSIDE:
                return _CONTENT_KIND[state], self.index if state in (State.BLOCK, State.MEMENTO) else -1
            return self.glue
        if token == BLOCK_START:
            self.index += 1
        kind = _STRUCTURAL_KIND[token]
        block = self.index if token in (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END) else -1
        self.glue = (kind, block)
        self.state = nxt
        return kind, block


def label(
    ids,
    special: MementoIds,
    completion_start: int | None = None,
    attention_mask=None,
    strict: bool = True,
    turns: bool = False,
) -> Spans:
    """Label every token of one sequence. `ids`: (T,) ints; `attention_mask`: (T,) with 0 for padding; `turns`: a
    multi-turn chat labelled from `completion_start` (e.g. 0), its blocks numbered across the turns."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    pad = np.zeros(n, bool) if attention_mask is None else np.asarray(attention_mask).reshape(-1) == 0
    if completion_start is None:
        think = np.flatnonzero((ids == special.think_start) & ~pad)
        completion_start = int(think[-1]) if len(think) else n
    kind = np.full(n, Kind.PROMPT, dtype=np.int8)
    block = np.full(n, -1, dtype=np.int32)
    kind[pad] = Kind.PAD
    labeller = Labeller(special, strict, turns)
    for t in range(completion_start, n):
        if not pad[t]:
            kind[t], block[t] = labeller.push(ids[t], t)
    return Spans(kind=kind, block=block, state=labeller.state, issues=tuple(labeller.issues))
