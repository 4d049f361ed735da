"""Atomize a chain of thought into units: sentences, with code and math kept whole, then merged.

Candidate boundaries are sentence starts (blingfire, on a copy of the text in which code and math are masked so
the splitter never looks inside them) and line starts. A boundary is dropped when it falls inside code or math,
inside open parentheses/brackets, or right after a bare list marker. Units are then merged where a boundary cannot
be a good place to cut a block: after a unit ending in ':', before a continuation word (therefore / thus / so /
hence / then) that follows math, between items of one list, before short math or code lines, along assignment
chains, and around fragments under `min_tokens` tokens. The paper reports ~397 candidate boundaries per trace
before merging and ~187 after; `Atoms` keeps both counts.

Units are contiguous slices of the text (whitespace stays with the unit before it), so `"".join(units) == text`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

PROTECTED = re.compile(
    r"```.*?```|```[^\n]*"  # fenced code (an unclosed fence: its own line only)
    r"|\$\$.*?\$\$"  # display math
    r"|\\\[.*?\\\]"
    r"|\\\(.*?\\\)"  # inline math
    r"|(?<![\\$])\$(?!\s)[^$\n]+?(?<![\s\\])\$"
    r"|(?:(?<=\n\n)|\A)(?:(?: {4}|\t)[^\n]*(?:\n|\Z))+",  # indented code after a blank line
    re.DOTALL,
)
LIST_MARKER = re.compile(r"\s*(?:\d{1,3}[.)]|[a-zA-Z][.)]|[-*•])\s*")
LIST_ITEM = re.compile(r"\s*(?:\d{1,3}[.)]|[a-zA-Z][.)]|[-*•])\s+\S")
CONTINUATION = re.compile(r"\s*(?:therefore|thus|so|hence|then)\b", re.IGNORECASE)
ASSIGNMENT = re.compile(r"\s*(?:\\?[A-Za-z][\w{}^\\']*|\$[^$]+\$|\\\(.+?\\\))\s*(?:=|:=|\\leq?|\\geq?|<|>)")
ENDS_WITH_MATH = re.compile(r"(?:\$|\\\]|\\\)|[=\d])\s*[.,;]?\s*$")


class Atoms(NamedTuple):
    units: list[str]
    raw_units: int  # before merging; candidate boundaries = units - 1


def _masked(text: str) -> tuple[str, np.ndarray]:
    """A copy of `text` with code/math replaced by 'x' (same length), and a per-char 'protected' flag."""
    protected = np.zeros(len(text) + 1, bool)
    chars = list(text)
    for m in PROTECTED.finditer(text):
        protected[m.start() + 1 : m.end()] = True  # a unit may start at the span, never inside it
        chars[m.start() : m.end()] = "x" * (m.end() - m.start())
    return "".join(chars), protected


def _depth(masked: str) -> np.ndarray:
    """(len + 1,) bracket depth before each character (never negative)."""
    depth, out = 0, np.zeros(len(masked) + 1, np.int32)
    for i, ch in enumerate(masked):
        out[i] = depth
        if ch in "([{":
            depth += 1
        elif ch in ")]}" and depth:
            depth -= 1
    out[len(masked)] = depth
    return out


def split(text: str) -> list[int]:
    """Start offsets of the raw units (sentences and lines) of `text`; the first is always 0."""
    import blingfire

    if not text.strip():
        return [0]
    masked, protected = _masked(text)
    depth = _depth(masked)
    _, spans = blingfire.text_to_sentences_and_offsets(masked)
    candidates = {s for s, _ in spans} | {m.end() for m in re.finditer(r"\n[ \t]*(?=\S)", masked)}
    starts = [0]
    for pos in sorted(candidates):
        pos = len(text) - len(text[pos:].lstrip())  # the unit starts at its first non-space character
        if pos <= starts[-1] or pos >= len(text) or protected[pos] or depth[pos] > 0:
            continue
        if LIST_MARKER.fullmatch(text[starts[-1] : pos]):
            continue  # "1." alone is not a sentence
        starts.append(pos)
    return starts


def atomize(
    text: str, count_tokens: Callable[[list[str]], list[int]], min_tokens: int = 5, max_tokens: int = 256
) -> Atoms:
    """Split then merge; `count_tokens` maps texts to token counts; merges never grow a unit past `max_tokens`."""
    starts = split(text)
    units = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    raw = len(units)
    tokens = list(count_tokens(units))

    def merge(i: int) -> None:  # unit i absorbs unit i + 1
        units[i : i + 2] = [units[i] + units[i + 1]]
        tokens[i : i + 2] = [tokens[i] + tokens[i + 1]]

    i = 0
    while i < len(units) - 1:
        cur, nxt = units[i], units[i + 1]
        fits = tokens[i] + tokens[i + 1] <= max_tokens
        glue = (
            cur.rstrip().endswith(":")
            or (CONTINUATION.match(nxt) and ENDS_WITH_MATH.search(cur))
            or (LIST_ITEM.match(cur) and LIST_ITEM.match(nxt))
            or _mostly_math(nxt, tokens[i + 1])
            or (ASSIGNMENT.match(nxt) and ASSIGNMENT.match(cur))
            or tokens[i] < min_tokens
        )
        if glue and fits:
            merge(i)
        else:
            i += 1
    if len(units) > 1 and tokens[-1] < min_tokens:
        merge(len(units) - 2)
    return Atoms(units, raw)


def _mostly_math(unit: str, tokens: int) -> bool:
    """A short line that is mostly math or code belongs with the text that introduces it."""
    body = unit.strip()
    if not body or tokens > 40:
        return False
    covered = sum(m.end() - m.start() for m in PROTECTED.finditer(body))
    return covered >= 0.6 * len(body)
