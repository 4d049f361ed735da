"""The task registry of `memento eval`: a task lists its problems and checks a completion against one of them.

One file per task family registers itself here; `get("champ")`, `get("gym:basic_arithmetic")` (a family and its
option after the colon) build one. Problems carry what their checker needs, so a resumed run re-checks nothing.

`PAPER_TASKS` are the paper's 14 benchmarks (Table 5); `COMP_MATH` the eleven competitions whose unweighted mean
pass@1 is its "Comp. Math" column (`is_comp_math` says whether a task name is one of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memento.core.errors import MementoError
from memento.eval.check import Verdict

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
COMP_MATH = (  # the paper's competition math, in its order (tasks/competitions.py)
    "aime24",
    "aime25",
    "aime26",
    "hmmt_feb23",
    "hmmt_feb24",
    "hmmt_feb25",
    "hmmt_feb26",
    "hmmt_nov25",
    "brumo25",
    "smt25",
    "cmimc25",
)
PAPER_TASKS = (*COMP_MATH, "math500", "gpqa", "lcb")  # all of Table 5 (lcb: all 1,055 problems of release v6)


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the user message
    reference: str  # the reference answer, as the task states it
    data: dict = field(default_factory=dict)  # anything else the checker needs


class Task:
    name: str
    about: str
    votes = True  # answers can be voted on (maj@k); not programs

    def problems(self) -> list[Problem]:
        raise NotImplementedError

    def check(self, problem: Problem, completion: str) -> Verdict:
        raise NotImplementedError


FAMILIES: dict[str, Callable[..., Task]] = {}


def register(family: str):
    def wrap(factory):
        FAMILIES[family] = factory
        return factory

    return wrap


def get(name: str) -> Task:
    """The task called `name` (`family` or `family:option`)."""
    _load_families()
    family, _, option = name.partition(":")
    if family not in FAMILIES:
        raise MementoError(f"task {name!r}: unknown; choose from {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](option) if option else FAMILIES[family]()


def family_of(name: str) -> str:
    """The family of a task name: `hmmt_feb25:/data/x.jsonl` -> `hmmt_feb25`, `lcb:2025-02-01..` -> `lcb`."""
    return name.partition(":")[0]


def is_comp_math(name: str) -> bool:
    """Whether the task `name` (`family` or `family:option`, e.g. a local copy) counts towards Comp. Math."""
    return family_of(name) in COMP_MATH


# the files here; each registers its families
MODULES = ("champ", "gym", "toy", "competitions", "math500", "gpqa", "livecodebench")


def _load_families() -> None:
    import importlib

    for module in MODULES:
        importlib.import_module(f"memento.eval.tasks.{module}")
