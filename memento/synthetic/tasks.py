"""The toy tasks by name, and `toy:NAME?key=value&...` specs (what recipes and the CLI accept as data)."""

from __future__ import annotations

import inspect
from urllib.parse import parse_qsl

from memento.core.errors import MementoError
from memento.core.format import Trace
from memento.synthetic.digits import digits_traces
from memento.synthetic.orbit import orbit_traces
from memento.synthetic.sums import sums_traces

TASKS = {"orbit": orbit_traces, "digits": digits_traces, "sums": sums_traces}


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def from_spec(spec: str) -> list[Trace]:
    """Traces of a `toy:NAME?key=value&...` spec, e.g. `toy:orbit?n=2000&seed=0`."""
    name, _, query = spec.removeprefix("toy:").partition("?")
    if name not in TASKS:
        raise MementoError(f"'{spec}': unknown toy task '{name}'; known: {', '.join(TASKS)}")
    try:
        params = {k: _value(v) for k, v in parse_qsl(query, strict_parsing=bool(query))}
        return TASKS[name](**params)
    except (TypeError, ValueError) as e:
        raise MementoError(f"'{spec}': bad parameters: {e}") from None


SCORING_PROBLEMS, SCORING_SEED = 256, 10_000  # the held-out problems toy models are scored on (demo --full, eval)


def held_out(task: str, n: int, seed: int, **params) -> list[Trace]:
    """`n` traces for scoring or probing: from the problems never trained on, where the task keeps such a split."""
    make = TASKS[task]
    if "split" in inspect.signature(make).parameters:
        params["split"] = "test"
    return make(n, seed=seed, **params)
