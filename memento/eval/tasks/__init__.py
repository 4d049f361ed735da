"""The task registry of `memento eval`: a task lists its problems and checks a completion against one of them.

One file per task family registers itself here; `get("champ")`, `get("gym:basic_arithmetic")` (a family and its
option after the colon) build one. Problems carry what their checker needs, so a resumed run re-checks nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memento.core.errors import MementoError
from memento.eval.check import Verdict

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


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


MODULES = ("champ", "gym", "toy", "aime", "math500", "gpqa", "livecodebench")  # files here; each registers families


def _load_families() -> None:
    import importlib

    for module in MODULES:
        importlib.import_module(f"memento.eval.tasks.{module}")
