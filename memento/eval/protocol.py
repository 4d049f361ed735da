"""Evaluation protocols: named sets of sampling settings, so that numbers are comparable with the paper's by default.

- `paper` (the paper's App. A.2.2, Table 5): temperature 0.6, top-p 0.95, top-k 20, at most 32,000 new tokens in a
  context of 32,768, 64 samples per problem on the competition-math tasks (`memento.eval.tasks.COMP_MATH`) and 2
  on the others.
- `quick`: greedy, one sample, 4,096 new tokens: smoke tests and development, not comparable with the paper.

A setting given explicitly (`--n-samples 4`) overrides the protocol's and is reported as a deviation. So is a model
whose context (`max_position_embeddings`) is shorter than the protocol's: its samples stop there (finish reason
`length`, counted as truncated).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from memento.core.errors import MementoError


@dataclass(frozen=True)
class Protocol:
    name: str
    about: str
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    samples: int  # per problem on most tasks
    comp_math_samples: int  # per problem on the competition-math tasks
    context: int | None = None  # the prompt and completion together (the paper's vLLM max model length)

    def samples_for(self, task: str) -> int:
        from memento.eval.tasks import is_comp_math

        return self.comp_math_samples if is_comp_math(task) else self.samples

    def values(self, task: str) -> dict:
        """The protocol's sampling settings for `task` (the `SAMPLING` fields of `EvalSettings`)."""
        return {
            "samples": self.samples_for(task),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }

    def settings(self, task: str, model: str | Path | None = None, **given) -> tuple[dict, list[str]]:
        """The sampling settings of `task` under this protocol, `given` (explicit values, None = not given) taking
        precedence, and the deviations from the protocol, in words."""
        out = self.values(task) | {k: v for k, v in given.items() if v is not None}
        return out, deviations(self, task, out, model)


def deviations(protocol: Protocol, task: str, settings: dict, model: str | Path | None = None) -> list[str]:
    """What in `settings` (and the context of `model`) differs from `protocol` on `task`, in words (empty: the
    protocol as specified)."""
    expected = protocol.values(task)
    words = {"samples": "samples per problem", "max_new_tokens": "max new tokens", "top_p": "top-p", "top_k": "top-k"}
    changed = [k for k, v in expected.items() if k in settings and settings[k] != v]
    found = [f"{words.get(k, k)} {settings[k]} (protocol: {expected[k]})" for k in changed]
    context = model_context(model) if model is not None and protocol.context else None
    if context is not None and context < protocol.context:
        found.append(f"model context {context} tokens (protocol: {protocol.context}; samples that reach it stop)")
    return found


def model_context(model: str | Path) -> int | None:
    """The longest sequence a model folder's config allows (`max_position_embeddings`), None when not stated."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    config = config.get("text_config", config)
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


PROTOCOLS = {
    "paper": Protocol(
        "paper",
        "the paper's (App. A.2.2): temperature 0.6, top-p 0.95, top-k 20, 32,000 new tokens in 32,768, "
        "64 samples on competition math, 2 elsewhere",
        0.6,
        0.95,
        20,
        32_000,
        2,
        64,
        32_768,
    ),
    "quick": Protocol(
        "quick",
        "smoke tests: greedy, 1 sample, 4,096 new tokens (not comparable with the paper)",
        0.0,
        1.0,
        0,
        4096,
        1,
        1,
    ),
}


def get(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise MementoError(f"--protocol {name}: choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


SAMPLING = ("samples", "temperature", "top_p", "top_k", "max_new_tokens")


def settings_for(common: dict, model: str | Path, task: str) -> dict:
    """`EvalSettings` keywords for `task` on `model` from a command's `common` settings: with a `protocol`, its
    settings for the task and model, the sampling values given explicitly (not None) winning; without one, the
    values given (None: `EvalSettings`' default)."""
    rest = {k: v for k, v in common.items() if k != "protocol"}
    name = common.get("protocol") or ""
    if name:
        sampling, _ = get(name).settings(task, model, **{k: rest.pop(k, None) for k in SAMPLING})
        rest |= sampling
    return {k: v for k, v in rest.items() if v is not None} | {"protocol": name}
