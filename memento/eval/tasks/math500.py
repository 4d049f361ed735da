"""MATH-500 (`math500`): the 500 test problems of MATH chosen for PRM800K, with free-form LaTeX answers.

Source: HuggingFaceH4/MATH-500 on the Hugging Face Hub, `test.jsonl` (the test split: problem, solution, answer,
subject, level, unique_id). `math500:/data/math500.jsonl` reads a local file with the same fields instead (problem,
answer and unique_id are needed; subject and level are kept in `Problem.data` when present).

The prompt is the problem and the paper's instruction (`MATH_INSTRUCTION`); the last `\\boxed{}` of the answer
section is compared with the reference by math-verify (`0.5` and `\\frac{1}{2}` agree, so do `(3, \\frac{\\pi}{2})`
and `\\left( 3, \\frac{\\pi}{2} \\right)`).
"""

from __future__ import annotations

from functools import cache

from memento.eval.check import Verdict, check_math
from memento.eval.tasks import MATH_INSTRUCTION, Problem, Task, register
from memento.eval.tasks.source import HubSource, rows

SOURCE = HubSource("math500", "HuggingFaceH4/MATH-500", ("test.jsonl",), ("problem", "answer", "unique_id"))


@cache
def _problems(path: str) -> tuple[Problem, ...]:
    return tuple(
        Problem(
            str(row["unique_id"]),
            f"{row['problem']}\n\n{MATH_INSTRUCTION}",
            str(row["answer"]).strip(),
            {"subject": row.get("subject"), "level": row.get("level")},
        )
        for row in rows(path, SOURCE)
    )


@register("math500")
class Math500(Task):
    def __init__(self, path: str = ""):
        self.path = path
        self.name = f"math500:{path}" if path else "math500"
        self.about = f"MATH-500: 500 problems ({path or SOURCE.repo})"

    def problems(self) -> list[Problem]:
        return list(_problems(self.path))

    def check(self, problem: Problem, completion: str) -> Verdict:
        return check_math(completion, problem.reference)
