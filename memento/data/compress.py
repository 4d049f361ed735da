"""Compressors: one memento per block.

A memento is an information artifact, not a narrative: key formulas verbatim, numerical values, methods named,
checks and their outcomes, result first; only what the block established; about 10% of the block's tokens and at
most 20%.

`ExtractiveCompressor` is the offline one: it ranks the block's sentences by what a memento must keep (formulas,
numbers, conclusions, checks, items a judge asked for), fills the 10% budget by value per token (up to 20% for
high-value sentences), puts the sentence carrying the block's result first and keeps the rest in order.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable

from memento.data.atomize import PROTECTED, split

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?")
CONCLUSION = re.compile(r"\b(?:therefore|thus|hence|so|we get|gives|yields|result|answer|equals|conclude)\b", re.I)
CHECK = re.compile(r"\b(?:check|checks|checked|verify|verified|confirm|confirmed|consistent|correct)\b", re.I)
FILLER = re.compile(r"\s*(?:hmm+|wait|let me see|okay|ok|alright|right)\b", re.I)
NARRATIVE = re.compile(r"\b(?:I think|let me|hmm+|wait|I need to|I'll|we will now|the author|the block)\b", re.I)


class Compressor(ABC):
    """Turns a trace's blocks into mementos. Contract: one entry per block, None where it produced nothing usable
    (the pipeline then asks again for that block alone)."""

    @abstractmethod
    def compress(self, problem: str, blocks: list[str]) -> list[str | None]: ...

    @abstractmethod
    def revise(
        self, problem: str, blocks: list[str], index: int, memento: str, feedback: str, must_include: list[str]
    ) -> str | None:
        """Rewrite memento `index` following a judge's feedback."""


def sentences(text: str) -> list[str]:
    starts = split(text, lines=True)
    return [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True) if text[a:b].strip()]


def result_rank(sentence: str) -> int:
    """2: states a conclusion with a value (or a boxed answer); 1: an equation with a value; 0: neither."""
    if "\\boxed" in sentence or (
        CONCLUSION.search(sentence) and NUMBER.search(sentence) and not CHECK.search(sentence)
    ):
        return 2
    return 1 if re.search(r"=\s*-?\d", sentence) else 0


def has_result(sentence: str) -> bool:
    return result_rank(sentence) > 0


class ExtractiveCompressor(Compressor):
    def __init__(self, count_tokens: Callable[[list[str]], list[int]], ratio: float = 0.10, max_ratio: float = 0.20):
        self.count_tokens = count_tokens
        self.ratio = ratio
        self.max_ratio = max_ratio

    def compress(self, problem: str, blocks: list[str]) -> list[str | None]:
        return [self._extract(block, []) for block in blocks]

    def revise(self, problem, blocks, index, memento, feedback, must_include):
        """Extract again with the judge's items first; then, as a compressor told to, drop narration and state what is
        still missing (formulas verbatim, values, the method, the check) in a closing clause, if it fits `max_ratio`."""
        block = blocks[index]
        memento = self._extract(block, must_include)
        if memento is None:
            return None
        memento = " ".join(NARRATIVE.sub("", memento).split()).replace(" ,", ",")
        missing = [m for m in must_include if m not in memento and m not in NUMBER.findall(memento)]
        extra = " Also: " + "; ".join(missing) + "." if missing else ""
        budget = self.max_ratio * self.count_tokens([block])[0]
        return memento + extra if self.count_tokens([memento + extra])[0] <= budget else memento

    def _value(self, sentence: str, must_include: list[str]) -> float:
        value = 0.0
        if "=" in sentence or PROTECTED.search(sentence):
            value += 2
        value += min(len(NUMBER.findall(sentence)), 3)
        value += 1 if CONCLUSION.search(sentence) else 0
        value += 3 if "\\boxed" in sentence else 0
        value += 1 if CHECK.search(sentence) else 0
        value += 5 * sum(item in sentence for item in must_include)
        if FILLER.match(sentence) and not NUMBER.search(sentence):
            value -= 2
        return value

    def _extract(self, block: str, must_include: list[str]) -> str | None:
        sents = sentences(block)
        if not sents:
            return None
        flat = [" ".join(s.split()) for s in sents]
        tokens = self.count_tokens(flat)
        total = sum(tokens)
        target = max(math.ceil(self.ratio * total), 8)
        limit = max(math.floor(self.max_ratio * total), target)
        values = [self._value(s, must_include) for s in flat]
        order = sorted(range(len(flat)), key=lambda i: (-values[i] / (tokens[i] + 5), i))
        chosen: list[int] = []
        used = 0
        for i in order:
            budget = target if values[i] < 3 else limit
            if values[i] > 0 and used + tokens[i] <= budget:
                chosen.append(i)
                used += tokens[i]
        if not chosen:  # every useful sentence is too long: cut the best one at a word boundary
            best = max(range(len(flat)), key=lambda i: (values[i], -i))
            words = flat[best].split()
            keep = max(1, len(words) * limit // max(tokens[best], 1))
            return " ".join(words[:keep])
        chosen.sort()
        lead = max(chosen, key=lambda i: (result_rank(flat[i]), i))
        if result_rank(flat[lead]):  # result first: the latest, most conclusive result sentence
            chosen.remove(lead)
            chosen.insert(0, lead)
        return " ".join(flat[i] for i in chosen)


class LLMCompressor(Compressor):
    """One call sees the problem and all blocks and returns `{"mementos": [...]}`; entries that are missing or
    unusable come back as None, and `revise` (one block, with retries) redoes them."""

    def __init__(self, backend, retries: int = 5):
        self.backend, self.retries = backend, retries

    def compress(self, problem: str, blocks: list[str]) -> list[str | None]:
        from memento.data.llm import LLMOutputError, prompt

        shown = "\n\n".join(f"Block {i + 1}:\n{b}" for i, b in enumerate(blocks))
        text = prompt("compress", problem=problem, blocks=shown, count=len(blocks))
        reply = self.backend.complete([{"role": "user", "content": text}], 256 + len(shown) // 12)
        try:
            return parse_mementos(reply, len(blocks))
        except LLMOutputError:
            return [None] * len(blocks)

    def revise(self, problem, blocks, index, memento, feedback, must_include):
        from memento.data.llm import ask, prompt

        text = prompt(
            "compress_one",
            problem=problem,
            block=blocks[index],
            feedback=f"A reviewer's feedback on an earlier version: {feedback}\n" if feedback else "",
            previous=f"\nEarlier version:\n{memento}\n" if memento else "",
        )
        value, _ = ask(self.backend, text, parse_memento, self.retries, 128 + len(blocks[index]) // 12)
        return value


def _usable(value) -> str | None:
    from memento.core.format import SPECIAL_TOKENS

    if not isinstance(value, str) or not value.strip() or any(t in value for t in SPECIAL_TOKENS):
        return None
    return value.strip()


def parse_mementos(reply: str, count: int) -> list[str | None]:
    """`{"mementos": [...]}`: one entry per block, None for each missing or unusable one."""
    from memento.data.llm import LLMOutputError, parse_json_object

    mementos = parse_json_object(reply).get("mementos")
    if not isinstance(mementos, list):
        raise LLMOutputError("no 'mementos' list in the reply")
    return [_usable(m) for m in mementos[:count]] + [None] * (count - len(mementos))


def parse_memento(reply: str) -> str:
    from memento.data.llm import LLMOutputError, parse_json_object

    memento = _usable(parse_json_object(reply).get("memento"))
    if memento is None:
        raise LLMOutputError("no usable 'memento' string in the reply")
    return memento
