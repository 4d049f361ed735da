"""Answer checking: what a completion answers, and whether that is right.

Every sample ends in one of three outcomes, counted apart: `correct`, `wrong`, or `no_answer` (nothing could be
extracted: a truncated generation, a missing `\\boxed{}`), so that a model that never finishes is not mistaken for
one that reasons badly.

- The answer is looked for after the last `</think>` when there is one (the reasoning may box intermediate results).
- Math: the content of the last `\\boxed{...}` (braces balanced), compared with the reference by `math-verify`
  (symbolic equivalence: `1/2`, `0.5` and `\\frac{1}{2}` agree; `x=3` and `3` agree; sets ignore order). When
  math-verify cannot parse either side, the normalised strings are compared.
- Multiple choice: the letter in the last `\\boxed{}` (`C`, `(C)`, `\\text{C}`), else the last "answer is (C)" /
  "Answer: C".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_END = "</think>"
CHOICE = re.compile(r"answer\s*(?:is|:)\s*[:(\s]*\(?\s*([A-Z])\s*\)?(?![A-Za-z])", re.I)


@dataclass(frozen=True)
class Verdict:
    answer: str | None  # what was extracted; None: nothing to extract
    correct: bool

    @property
    def outcome(self) -> str:
        return "no_answer" if self.answer is None else "correct" if self.correct else "wrong"


def answer_section(completion: str) -> str:
    """The part of a completion after its reasoning (all of it when there is no `</think>`)."""
    return completion.rsplit(THINK_END, 1)[1] if THINK_END in completion else completion


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), with nested braces; None when there is none or it
    is not closed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _normal(text: str) -> str:
    text = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\[,;!: ]|\\left|\\right|\$", "", text)
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def same_math(answer: str, reference: str) -> bool:
    """Whether two math answers (LaTeX or plain) are equivalent."""
    from math_verify import parse, verify

    try:
        gold, pred = parse(f"\\boxed{{{reference}}}"), parse(f"\\boxed{{{answer}}}")
        if gold and pred:
            return bool(verify(gold, pred))
    except Exception:  # math-verify raises on inputs it cannot handle (and on timeouts): fall back to strings
        pass
    return _normal(answer) == _normal(reference)


def check_math(completion: str, reference: str) -> Verdict:
    answer = last_boxed(answer_section(completion))
    return Verdict(answer, answer is not None and same_math(answer, reference))


def choice_letter(completion: str, letters: str = "ABCD") -> str | None:
    """The option a completion picks, or None."""
    text = answer_section(completion)
    boxed = last_boxed(text)
    if boxed is not None:
        letter = _normal(boxed).strip("()").upper()
        return letter if len(letter) == 1 and letter in letters else None
    picks = [m.group(1).upper() for m in CHOICE.finditer(text) if m.group(1).upper() in letters]
    return picks[-1] if picks else None


def check_choice(completion: str, reference: str, letters: str = "ABCD") -> Verdict:
    letter = choice_letter(completion, letters)
    return Verdict(letter, letter is not None and letter == reference.strip().upper())
