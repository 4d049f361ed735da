"""reasoning-gym generators (`gym:NAME`, e.g. `gym:basic_arithmetic`), scored by each generator's own verifier.

The problems are the first `SIZE` of the generator with seed `SEED`; the answer is the last `\\boxed{}` of the
answer section (or, without one, nothing: an extraction failure), scored by `score_answer` (full marks = right).
"""

from __future__ import annotations

from functools import cache

from memento.core.errors import MementoError
from memento.eval.check import Verdict, answer_section, last_boxed
from memento.eval.tasks import Problem, Task, register

SIZE, SEED = 100, 0
INSTRUCTION = "Put your final answer within \\boxed{}."


@cache
def _dataset(name: str):
    import reasoning_gym

    try:
        return reasoning_gym.create_dataset(name, size=SIZE, seed=SEED)
    except Exception as e:  # reasoning-gym raises a bare error naming nothing we can act on
        raise MementoError(f"task gym:{name}: reasoning-gym has no generator {name!r} ({e})") from e


@register("gym")
class Gym(Task):
    about = f"reasoning-gym generators, {SIZE} problems each, seed {SEED} (offline)"

    def __init__(self, generator: str = "basic_arithmetic"):
        self.generator = generator
        self.name = f"gym:{generator}"

    def problems(self) -> list[Problem]:
        data = _dataset(self.generator)
        return [
            Problem(f"{self.generator}/{i}", f"{e['question']}\n\n{INSTRUCTION}", str(e["answer"]), {"index": i})
            for i, e in enumerate(data)
        ]

    def check(self, problem: Problem, completion: str) -> Verdict:
        data = _dataset(self.generator)
        answer = last_boxed(answer_section(completion))
        if answer is None:
            return Verdict(None, False)
        return Verdict(answer, data.score_answer(answer=answer, entry=data[problem.data["index"]]) >= 1.0)
