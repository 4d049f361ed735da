"""Boundary scores 0-3 between consecutive units: 0 mid-thought, 1 weak, 2 good, 3 strong transition.

`heuristic_scores` is the offline scorer: discourse markers that open a new line of thought ("Wait",
"Alternatively", "Let me check"), paragraph breaks and the end of a computation. `apply_hard_rules` runs after any
scorer (LLM or heuristic): never cut after ':' / '=' / '=>', nor before a Therefore/Thus/Hence/So that continues a
derivation.
"""

from __future__ import annotations

import itertools
import re

from memento.data.atomize import CONTINUATION, ENDS_WITH_MATH

STRONG = re.compile(
    r"\s*(?:\**)(?:wait|alternatively|but wait|hmm+|hold on|on second thought|another (?:approach|way|idea|method)"
    r"|let me (?:check|verify|double[- ]check|re-?check|re-?examine|re-?think|think again|try|recap|summarize"
    r"|reconsider|go back|confirm)|let's (?:check|verify|try|recap|confirm|consider)"
    r"|to (?:summarize|recap|verify|check)"
    r"|in summary|so,? the (?:final )?answer|final answer|therefore,? the (?:final )?answer|okay,? so|ok,? so"
    r"|now,? (?:let|we|i)|next,|actually,|maybe (?:i|we) (?:should|can))\b",
    re.IGNORECASE,
)
MEDIUM = re.compile(
    r"\s*(?:\**)(?:now|next|first|second|third|finally|also|then,|so now|moving on|let me|let's|alright|okay|ok|"
    r"step \d|case \d|similarly|on the other hand)\b",
    re.IGNORECASE,
)
RESULT = re.compile(r"(?:=\s*-?[\d.,/\\{}a-z^ ]{1,20}|\\boxed\{.*\}|(?:answer|result) is [^.]{1,40})\s*[.!]?\s*$", re.I)
NO_CUT_AFTER = re.compile(r"(?::|=|=>|\\implies|\\Rightarrow|→)\s*$")


def heuristic_scores(units: list[str]) -> list[float]:
    """(n - 1,) scores for the boundaries between consecutive units, from surface cues only."""
    scores = []
    for cur, nxt in itertools.pairwise(units):
        tail = cur[len(cur.rstrip()) :]
        points = 0
        if STRONG.match(nxt):
            points += 2
        elif MEDIUM.match(nxt):
            points += 1
        if "\n\n" in tail:
            points += 1
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
