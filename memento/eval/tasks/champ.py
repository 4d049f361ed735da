"""CHAMP: 270 competition math problems (`champ-dataset`), with free-form reference answers.

A reference such as "0 is the only possible value", "98 values" or "sum_(i=1)^n i^2, or equivalently n(n+1)(2n+1)/6"
is read as a list of acceptable answers (the whole text, each alternative, and the leading expression of a phrase);
the boxed answer is right when it is equivalent to any of them.
"""

from __future__ import annotations

import re
from functools import cache

from memento.eval.check import Verdict, answer_section, last_boxed, same_math
from memento.eval.tasks import MATH_INSTRUCTION, Problem, Task, register

PHRASE = re.compile(
    r"^(.*?\S)\s+(?:is the only possible value|is the only value|is the only solution|values?|numbers?|"
    r"solutions?|ways?|integers?)\s*\.?$",
    re.I,
)


def alternatives(reference: str) -> list[str]:
    found = [reference]
    for part in re.split(r",?\s*or equivalently\s*,?|;\s*", reference):
        part = part.strip().rstrip(".")
        if part:
            found.append(part)
            if m := PHRASE.match(part):
                found.append(m.group(1))
    return list(dict.fromkeys(found))


@cache
def _problems() -> tuple[Problem, ...]:
    import champ_dataset

    data = champ_dataset.load("v0")
    return tuple(
        Problem(p.identifier, f"{p.text}\n\n{MATH_INSTRUCTION}", p.answer, {"category": p.category})
        for p in sorted(data.problems.values(), key=lambda p: p.identifier)
    )


@register("champ")
class Champ(Task):
    name = "champ"
    about = "CHAMP: 270 competition math problems (offline)"

    def problems(self) -> list[Problem]:
        return list(_problems())

    def check(self, problem: Problem, completion: str) -> Verdict:
        answer = last_boxed(answer_section(completion))
        ok = answer is not None and any(same_math(answer, alt) for alt in alternatives(problem.reference))
        return Verdict(answer, ok)
