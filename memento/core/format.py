"""The Memento trace format: special tokens, the grammar they follow, trace dataclasses, `render` and `parse`.

An assistant response in Memento format is

    <think>\\n
    <|block_start|>reasoning 1<|block_end|>\\n<|summary_start|>memento 1<|summary_end|>\\n
    ...
    </think>\\n\\nfinal answer

Design choices:
- One grammar (`TRANSITIONS`) drives both the text parser here and the token labeller in `spans.py`, so text and
  token views of a trace can never disagree about what is well formed.
- Whitespace between structural tokens is formatting, not content: `render` writes one canonical newline there and
  `parse` accepts any whitespace. Text inside a block, a memento or the answer is kept byte for byte, so
  `parse(render(t)) == t` for every trace whose texts do not contain the special tokens themselves.
- `parse` is strict and raises `TraceFormatError` with the character offset of the first problem; `recover` is the
  lenient twin for messy real data: it keeps every complete block + memento pair and reports what it dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from memento.core.errors import MementoError, TraceFormatError

THINK_START = "<think>"
THINK_END = "</think>"
BLOCK_START = "<|block_start|>"
BLOCK_END = "<|block_end|>"
SUMMARY_START = "<|summary_start|>"
SUMMARY_END = "<|summary_end|>"
SPECIAL_TOKENS = (THINK_START, THINK_END, BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)
# Tokens that only Memento adds; <think>/</think> already exist in reasoning vocabularies such as Qwen3's.
MEMENTO_TOKENS = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)

GLUE = "\n"  # canonical whitespace written between structural tokens
ANSWER_SEP = "\n\n"  # canonical separator between </think> and the answer, removed once by parse

_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


class State(IntEnum):
    """Where a reader is in a response; shared by the text parser and the token labeller."""

    OUTSIDE = 0  # before <think>
    THINK = 1  # inside <think>, between blocks
    BLOCK = 2  # inside <|block_start|> ... <|block_end|>
    BLOCK_DONE = 3  # after <|block_end|>, waiting for <|summary_start|>
    MEMENTO = 4  # inside <|summary_start|> ... <|summary_end|>
    ANSWER = 5  # after </think>


TRANSITIONS: dict[tuple[State, str], State] = {
    (State.OUTSIDE, THINK_START): State.THINK,
    (State.THINK, BLOCK_START): State.BLOCK,
    (State.BLOCK, BLOCK_END): State.BLOCK_DONE,
    (State.BLOCK_DONE, SUMMARY_START): State.MEMENTO,
    (State.MEMENTO, SUMMARY_END): State.THINK,
    (State.THINK, THINK_END): State.ANSWER,
}

# States in which plain text is content; in the others only whitespace is allowed.
CONTENT_STATES = frozenset({State.BLOCK, State.MEMENTO, State.ANSWER})


def transition_error(state: State, token: str) -> str:
    """Say why `token` cannot follow `state` (the names match the problems users see in real data)."""
    if state is State.OUTSIDE:
        return f"{token} before <think>"
    if state is State.THINK:
        return {
            BLOCK_END: "<|block_end|> with no open block",
            SUMMARY_START: "memento with no block",
            SUMMARY_END: "<|summary_end|> with no open memento",
            THINK_START: "nested <think>",
        }[token]
    if state is State.BLOCK:
        if token == BLOCK_START:
            return "nested <|block_start|> inside an open block"
        return f"unclosed block: {token} before <|block_end|>"
    if state is State.BLOCK_DONE:
        return f"block with no memento: {token} after <|block_end|>"
    if state is State.MEMENTO:
        return f"unclosed memento: {token} before <|summary_end|>"
    return f"{token} after </think>"


def end_error(state: State) -> str:
    """Say why a response cannot end in `state`."""
    return {
        State.OUTSIDE: "missing <think>",
        State.THINK: "missing </think>",
        State.BLOCK: "unclosed block at end of text",
        State.BLOCK_DONE: "block with no memento at end of text",
        State.MEMENTO: "unclosed memento at end of text",
    }[state]


@dataclass(slots=True)
class Block:
    """One reasoning block and the memento that summarises it."""

    text: str
    memento: str


@dataclass(slots=True)
class Trace:
    """A Memento trace: the problem, its blocks with their mementos, and the final answer.

    `sentences` and `block_ranges` (inclusive sentence-index ranges, one per block) are set when the trace comes
    from the data pipeline or an OpenMementos `full` row; `metadata` keeps every other field of the source.
    """

    problem: str
    blocks: list[Block]
    answer: str
    metadata: dict = field(default_factory=dict)
    sentences: list[str] | None = None
    block_ranges: list[tuple[int, int]] | None = None

    @property
    def response(self) -> str:
        return render(self)


class Dropped(NamedTuple):
    """Something `recover` left out: where it started, why, and the text that was lost."""

    offset: int
    reason: str
    text: str


class Recovered(NamedTuple):
    trace: Trace
    dropped: list[Dropped]


def render(trace: Trace) -> str:
    """The exact assistant response of `trace` in Memento token format."""
    parts = [THINK_START, GLUE]
    for i, block in enumerate(trace.blocks):
        for name, text in (("text", block.text), ("memento", block.memento)):
            _check_plain(text, f"block {i + 1} {name}")
        parts += [BLOCK_START, block.text, BLOCK_END, GLUE, SUMMARY_START, block.memento, SUMMARY_END, GLUE]
    _check_plain(trace.answer, "answer")
    parts += [THINK_END, ANSWER_SEP, trace.answer]
    return "".join(parts)


def render_plain(trace: Trace) -> str:
    """The same reasoning as plain chain of thought: block texts joined by newlines, no mementos, no Memento tokens.
    What the paper's *Control* models train on (the base model fine-tuned on the same traces, without the format)."""
    for i, block in enumerate(trace.blocks):
        _check_plain(block.text, f"block {i + 1} text")
    _check_plain(trace.answer, "answer")
    reasoning = "\n".join(block.text for block in trace.blocks)
    return THINK_START + GLUE + reasoning + GLUE + THINK_END + ANSWER_SEP + trace.answer


def _check_plain(text: str, where: str) -> None:
    for token in SPECIAL_TOKENS:
        if token in text:
            raise MementoError(f"{where} contains the special token {token}; it cannot be rendered losslessly")


def parse(response: str, problem: str = "", metadata: dict | None = None) -> Trace:
    """Parse a Memento-format response strictly; the first problem raises `TraceFormatError` with its offset."""
    return _read(response, problem, metadata, strict=True).trace


def recover(response: str, problem: str = "", metadata: dict | None = None) -> Recovered:
    """Parse leniently: keep every complete block + memento pair, report everything dropped."""
    return _read(response, problem, metadata, strict=False)


def _read(response: str, problem: str, metadata: dict | None, strict: bool) -> Recovered:
    reader = _Reader(strict)
    offset = 0
    for piece in _SPLIT.split(response):
        if piece in SPECIAL_TOKENS:
            reader.token(piece, offset)
        elif piece:
            reader.text(piece, offset)
        offset += len(piece)
    answer = reader.finish(len(response))
    trace = Trace(problem=problem, blocks=reader.blocks, answer=answer, metadata=dict(metadata or {}))
    return Recovered(trace, reader.dropped)


class _Reader:
    """The grammar's state machine over text pieces; in lenient mode it drops broken units and goes on."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.state = State.OUTSIDE
        self.blocks: list[Block] = []
        self.dropped: list[Dropped] = []
        self.block_text: str | None = None  # the finished block awaiting its memento; None for an orphan memento
        self.unit_start = 0  # offset of the pending block (or orphan memento)
        self.content: list[str] = []  # pieces of the current block / memento / answer

    def fail(self, reason: str, offset: int, text: str = "") -> None:
        if self.strict:
            raise TraceFormatError(reason, offset)
        self.dropped.append(Dropped(offset, reason, text))

    def drop_unit(self, reason: str) -> None:
        self.fail(reason, self.unit_start, (self.block_text or "") + "".join(self.content))
        self.state, self.block_text, self.content = State.THINK, None, []

    def token(self, token: str, offset: int) -> None:
        nxt = TRANSITIONS.get((self.state, token))
        if nxt is None and self.state in (State.BLOCK, State.BLOCK_DONE, State.MEMENTO):
            if self.strict:
                self.fail(transition_error(self.state, token), offset)
            self.drop_unit(transition_error(self.state, token))
            nxt = TRANSITIONS.get((self.state, token))
        if nxt is None and self.state is State.OUTSIDE and token != THINK_END:
            self.fail(transition_error(self.state, token), offset)
            self.state = State.THINK  # read on as if <think> had been there
            nxt = TRANSITIONS.get((self.state, token))
        if nxt is None and self.state is State.THINK and token == SUMMARY_START:
            if self.strict:
                self.fail(transition_error(self.state, token), offset)
            nxt, self.block_text = State.MEMENTO, None  # an orphan memento: read it whole, then drop it
        elif nxt is None:
            self.fail(transition_error(self.state, token), offset, token)
            return
        if token in (BLOCK_START, SUMMARY_START):
            self.content = []
            if token == BLOCK_START or self.state is State.THINK:
                self.unit_start = offset
        elif token == BLOCK_END:
            self.block_text, self.content = "".join(self.content), []
        elif token == SUMMARY_END:
            if self.block_text is None:
                self.fail("memento with no block", self.unit_start, "".join(self.content))
            else:
                self.blocks.append(Block(self.block_text, "".join(self.content)))
            self.block_text, self.content = None, []
        self.state = nxt

    def text(self, piece: str, offset: int) -> None:
        if self.state in CONTENT_STATES:
            self.content.append(piece)
        elif piece.strip():
            where = "before <think>" if self.state is State.OUTSIDE else "between blocks"
            self.fail(f"stray text {where}", offset + len(piece) - len(piece.lstrip()), piece)

    def finish(self, end: int) -> str:
        if self.state is State.ANSWER:
            answer = "".join(self.content)
            return answer[len(ANSWER_SEP) :] if answer.startswith(ANSWER_SEP) else answer
        if self.state in (State.BLOCK, State.BLOCK_DONE, State.MEMENTO):
            if self.strict:
                self.fail(end_error(self.state), self.unit_start)
            self.drop_unit(end_error(self.state))
        self.fail(end_error(self.state), end)
        return ""
