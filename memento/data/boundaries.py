"""Boundary scores 0-3 between consecutive units: 0 mid-thought, 1 weak, 2 good, 3 strong transition.

`heuristic_scores` is the offline scorer: discourse markers that open a new line of thought ("Alternatively",
"Let me check", "Wait, let me verify") or shift within one ("Wait", "Now"), and the end of a computation.
`apply_hard_rules` runs after any scorer (LLM or heuristic): never cut after ':' / '=' / '=>', nor before a
Therefore/Thus/Hence/So that continues a derivation.
"""

from __future__ import annotations

import functools
import itertools
import re

from memento.data.atomize import CONTINUATION, ENDS_WITH_MATH

NEW_LINE_OF_THOUGHT = re.compile(
    r"\s*(?:\**)(?:(?:but )?wait,?\s*|hmm+,?\s*|okay,?\s*|so,?\s*)?"
    r"(?:alternatively|another (?:approach|way|idea|method)|on second thought|let me (?:check|verify"
    r"|double[- ]check|re-?check|re-?examine|re-?think|think again|try (?:another|a different)|recap|summarize"
    r"|reconsider|go back|confirm)|let's (?:check|verify|recap|confirm|try (?:another|a different))"
    r"|to (?:summarize|recap|verify|check)|in summary|so,? the (?:final )?answer|final answer"
    r"|therefore,? the (?:final )?answer|maybe (?:i|we) (?:should|can) (?:try|use))\b",
    re.IGNORECASE,
)
SHIFT = re.compile(
    r"\s*(?:\**)(?:wait|but wait|hmm+|hold on|actually,|okay,? so|ok,? so|now,? (?:let|we|i)|next,|now|next|first"
    r"|second|third|finally|also|then,|so now|moving on|let me|let's|alright|okay|ok|step \d|case \d|similarly"
    r"|on the other hand)\b",
    re.IGNORECASE,
)
RESULT = re.compile(r"(?:=\s*-?[\d.,/\\{}a-z^ ]{1,20}|\\boxed\{.*\}|(?:answer|result) is [^.]{1,40})\s*[.!]?\s*$", re.I)
NO_CUT_AFTER = re.compile(r"(?::|=|=>|\\implies|\\Rightarrow|→)\s*$")


def heuristic_scores(units: list[str]) -> list[float]:
    """(n - 1,) scores for the boundaries between consecutive units, from surface cues only: 2 for a unit that opens
    a new line of thought (another approach, a check, a recap, the answer), 1 for a lesser shift ("Wait", "Now",
    "Let me"), one more after a finished computation."""
    scores = []
    for cur, nxt in itertools.pairwise(units):
        points = 2 if NEW_LINE_OF_THOUGHT.match(nxt) else 1 if SHIFT.match(nxt) else 0
        if RESULT.search(cur.rstrip()):
            points += 1
        scores.append(float(min(points, 3)))
    return apply_hard_rules(units, scores)


def apply_hard_rules(units: list[str], scores: list[float]) -> list[float]:
    """Zero the boundaries no scorer may choose (after ':' '=' '=>', before a continuing Therefore/Thus/...)."""
    out = list(scores)
    for b, (cur, nxt) in enumerate(itertools.pairwise(units)):
        if NO_CUT_AFTER.search(cur) or (CONTINUATION.match(nxt) and ENDS_WITH_MATH.search(cur)):
            out[b] = 0.0
    return out


class LLMScorer:
    """Scores boundaries with an LLM, in windows of `window` boundaries shown with `context` units around them.

    Each window's reply must be `{"scores": [...]}` with one score 0-3 per boundary; up to 5 retries, then the
    reply is repaired (padded / truncated with 0, clamped) and the repair counted. `two_pass` scores again with
    windows of 11 (other window edges) and averages, giving scores in halves.
    """

    def __init__(
        self,
        backend,
        window: int = 16,
        two_pass: bool = False,
        context: int = 2,
        retries: int = 5,
        parallel: bool = False,
    ):
        self.backend, self.window, self.two_pass = backend, window, two_pass
        self.context, self.retries, self.parallel = context, retries, parallel

    def score(self, problem: str, units: list[str]) -> list[float]:
        """Every window of every pass at once when `parallel` (they are independent), else one after another."""
        from memento.data.llm import fan_out

        windows = [(w, first) for w in (self.window, 11)[: 1 + self.two_pass] for first in range(0, len(units) - 1, w)]
        scored = fan_out(lambda wf: self._window(problem, units, *wf), windows, self.parallel)
        passes = [
            [s for (w, _), part in zip(windows, scored, strict=True) if w == size for s in part]
            for size in (self.window, 11)[: 1 + self.two_pass]
        ]
        averaged = [sum(p[b] for p in passes) / len(passes) for b in range(len(units) - 1)]
        return apply_hard_rules(units, averaged)

    def _window(self, problem: str, units: list[str], window: int, first: int) -> list[float]:
        """Scores of the boundaries first .. first + window - 1."""
        from memento.data.llm import ask, prompt, trace_usage

        bounds = list(range(first, min(first + window, len(units) - 1)))
        lo, hi = max(0, first - self.context), min(len(units), bounds[-1] + 2 + self.context)
        shown = "\n".join(f"[{k + 1}] {' '.join(units[k].split())}" for k in range(lo, hi))
        text = prompt(
            "score_boundaries",
            problem=problem,
            units=shown,
            count=len(bounds),
            boundaries=", ".join(str(b + 1) for b in bounds),
        )
        parse = functools.partial(parse_scores, count=len(bounds))
        value, reply = ask(self.backend, text, parse, self.retries, 256)
        if value is None:
            trace_usage().repairs += 1
            value = repair_scores(reply, len(bounds))
        return value


def parse_scores(reply: str, count: int) -> list[float]:
    """`{"scores": [...]}` with exactly `count` integers 0-3; LLMOutputError otherwise."""
    from memento.data.llm import LLMOutputError, parse_json_object

    scores = parse_json_object(reply).get("scores")
    if not isinstance(scores, list) or len(scores) != count:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise LLMOutputError(f"expected a list of {count} scores, got {got}")
    out = []
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= 3 or s != int(s):
            raise LLMOutputError(f"scores must be integers 0-3, got {s!r}")
        out.append(float(s))
    return out


def repair_scores(reply: str, count: int) -> list[float]:
    """Whatever integers the reply holds, clamped to 0-3, padded with 0 or cut to `count`."""
    found = [min(3.0, float(x)) for x in re.findall(r"(?<![\d.])\d+(?![\d.])", reply or "")[:count]]
    return found + [0.0] * (count - len(found))
