"""The demo's toy tasks (`toy:orbit`, `toy:digits`, `toy:sums`): the held-out problems `memento demo` scores.

The problems are `memento.synthetic.tasks.held_out(NAME, SIZE, SEED)`, the ones the demo draws for scoring (never
trained on): evaluating a shipped checkpoint with `--limit 64` scores the problems of `make demo`, with the full 256
those of `memento demo --full`. The check is the demo's own: the last `\\boxed{...}` of the whole completion must
equal the reference's, character for character (`memento.eval.check.last_boxed`, as in the demo), so that
`memento eval` reproduces the demo's accuracy rather than a near neighbour of it. Decode as the demo does: greedy,
and for the Memento models `--policy keep0 --mask-delimiters`. `toy:NAME?key=value&...` gives other problems of the
task, with the same check (`memento.synthetic.tasks.from_spec`: e.g. `toy:orbit?split=train&n=2000&seed=1`, the
training problems `memento rl` draws its prompts from).
"""

from __future__ import annotations

from functools import cache

from memento.core.errors import MementoError
from memento.eval.check import Verdict, last_boxed
from memento.eval.tasks import Problem, Task, register
from memento.synthetic.tasks import SCORING_PROBLEMS, SCORING_SEED

SIZE, SEED = SCORING_PROBLEMS, SCORING_SEED  # the demo's full-size scoring set


@cache
def _traces(name: str):
    from memento.synthetic.tasks import held_out

    return held_out(name, SIZE, SEED)


@register("toy")
class Toy(Task):
    about = f"the demo's toy task, its {SIZE} held-out scoring problems (seed {SEED}; offline)"

    def __init__(self, name: str = "orbit"):
        from memento.synthetic.tasks import TASKS

        toy, _, query = name.partition("?")  # toy:orbit?split=train&n=2000&seed=1: other problems (RL prompts)
        if toy not in TASKS:
            raise MementoError(f"task toy:{name}: unknown toy task; choose from {', '.join(TASKS)}")
        self.toy, self.query, self.name = toy, query, f"toy:{name}"

    def problems(self) -> list[Problem]:
        from memento.synthetic.tasks import from_spec

        traces = from_spec(self.name) if self.query else _traces(self.toy)
        prefix = f"{self.toy}?{self.query}" if self.query else self.toy
        return [Problem(f"{prefix}/{i}", t.problem, last_boxed(t.answer) or t.answer) for i, t in enumerate(traces)]

    def check(self, problem: Problem, completion: str) -> Verdict:
        answer = last_boxed(completion)
        return Verdict(answer, answer is not None and answer == problem.reference)
