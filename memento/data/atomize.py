"""Atomize a chain of thought into units, with the release's rules (paper Sec. 3) and our code/math protection.

Splitting: a blank line always ends a unit and a single newline counts as a space. Inside a paragraph, a unit ends at
a sentence end (blingfire, run on a copy of the text in which code and math are masked so the splitter never looks
inside them) after '?' or '!', or after a full stop that does not sit between two words: as in the release, "x = 3.
Then" stays one unit. That keeps the short paragraphs of QwQ-style reasoning whole. A sentence end never falls
inside code or math, inside open brackets, or right after a bare list marker.

Merging, in four passes (the release's order): a unit that opens with closing punctuation joins the one before; a
unit under `min_tokens` (5) tokens joins the one before; derivations and lists chain (after a colon, math after
unfinished math or before therefore / thus / so / hence / then, list item after list item, assignment after
assignment); runs of short (<= 30 words) math or code sentences join. There is no length cap: a long derivation or
code listing is one unit. On `raw_trace_ot3.jsonl` this gives 601 units before merging and 235 after; the release's
splitter gives 602 and 231 (tests/test_data_stages.py). The paper reports ~397 and ~187 per trace on average.

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
LEADING_PUNCTUATION = re.compile(r"\s*[:;)\]}\"'\u201d\u2019]")
MATH_SIGN = re.compile(r"[=^_\\]|=>|->|[<>]=|\b(?:right|left) side\b|\bsimplif|\bexpand", re.IGNORECASE)
CODE_SIGN = re.compile(r"[=+*/()\[\]{}<>$_^|]|->|=>")
SHORT_WORDS = 30


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


def split(text: str, lines: bool = False) -> list[int]:
    """Start offsets of the raw units of `text` (the first is always 0): paragraphs (a blank line always ends a unit)
    cut at sentence ends, a single newline counting as a space; `lines`: every line starts a unit too."""
    import blingfire

    if not text.strip():
        return [0]
    masked, protected = _masked(text)
    depth = _depth(masked)
    flat = masked if lines else re.sub(r"(?<!\n)\n(?!\n)", " ", masked)  # same length: offsets carry over
    _, spans = blingfire.text_to_sentences_and_offsets(flat)
    paragraphs = {m.end() for m in re.finditer(r"\n[ \t]*\n\s*(?=\S)", masked)}
    candidates = {s for s, _ in spans if lines or _ends_unit(text, s)} | paragraphs
    if lines:
        candidates |= {m.end() for m in re.finditer(r"\n[ \t]*(?=\S)", masked)}
    starts = [0]
    for pos in sorted(candidates):
        pos = len(text) - len(text[pos:].lstrip())  # the unit starts at its first non-space character
        if pos <= starts[-1] or pos >= len(text) or protected[pos]:
            continue
        if pos not in paragraphs and depth[pos] > 0:
            continue  # inside open brackets only a blank line ends a unit
        if LIST_MARKER.fullmatch(text[starts[-1] : pos]):
            continue  # "1." alone is not a sentence
        starts.append(pos)
    return starts


def _ends_unit(text: str, start: int) -> bool:
    """Whether the sentence before `start` ends a unit inside a paragraph: after '?' or '!', or after a full stop that
    does not sit between two words (as in the release, "so x = 3. Then" stays one unit, "(mod 7). Then" does not)."""
    before = text[:start].rstrip()
    if not before or before.endswith("..."):
        return False
    if before[-1] in "?!":
        return True
    if before[-1] != ".":
        return True  # a closing quote or bracket after the stop: the splitter saw a sentence end
    word = lambda ch: ch.isalnum() or ch == "_"  # noqa: E731
    return not (
        len(before) > 1 and word(before[-2]) and start < len(text) and (word(text[start]) or text[start] == "(")
    )


def atomize(text: str, count_tokens: Callable[[list[str]], list[int]], min_tokens: int = 5) -> Atoms:
    """Split, then merge in four passes (the release's order): a unit opening with closing punctuation joins the one
    before; a unit under `min_tokens` tokens joins the one before (the first unit stays); derivation and list chains
    join; runs of short math/code sentences join. No length cap: a long code listing or derivation is one unit."""
    starts = split(text)
    units = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    raw = len(units)
    tokens = list(count_tokens(units))
    for glue in (
        lambda cur, nxt, n: LEADING_PUNCTUATION.match(nxt) is not None,
        lambda cur, nxt, n: n < min_tokens,
        _chained,
        _short_math,
    ):
        i = 0
        while i < len(units) - 1:
            if glue(units[i], units[i + 1], tokens[i + 1]):
                units[i : i + 2] = [units[i] + units[i + 1]]
                tokens[i : i + 2] = [tokens[i] + tokens[i + 1]]
            else:
                i += 1
    return Atoms(units, raw)


def _has_math(unit: str) -> bool:
    return bool(MATH_SIGN.search(unit) or PROTECTED.search(unit))


def _chained(cur: str, nxt: str, _tokens: int) -> bool:
    """A derivation or list continues: after a colon; math after unfinished math or before a continuation word;
    list item after list item; an assignment after an assignment."""
    body = cur.rstrip()
    if body.endswith(":"):
        return True
    if CONTINUATION.match(nxt) and ENDS_WITH_MATH.search(cur):
        return True
    if _has_math(cur) and _has_math(nxt):
        unfinished = body.endswith(("=", "=>", "->", "\\implies", "...", ",")) or not body.endswith(tuple(".!?:;"))
        if unfinished or CONTINUATION.match(nxt):
            return True
    last = body.split("\n")[-1]
    if LIST_ITEM.match(last) and LIST_ITEM.match(nxt):
        return True
    return bool(ASSIGNMENT.match(nxt) and ASSIGNMENT.match(last))


def _short_math(cur: str, nxt: str, _tokens: int) -> bool:
    """Short sentences of math or code (<= 30 words, with a math/code sign) belong together."""
    last = cur.rstrip().split("\n")[-1]
    short = len(nxt.split()) <= SHORT_WORDS and bool(CODE_SIGN.search(nxt))
    return short and any(len(t.split()) <= SHORT_WORDS and CODE_SIGN.search(t) for t in (cur, last))
