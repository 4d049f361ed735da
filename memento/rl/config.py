"""The RL recipe: YAML -> validated dataclasses, with `key.sub=value` overrides (as `memento train`'s).

The paper's settings (Sec. 5, App. A.2.3) are the defaults where they carry over: CISPO with eps_low = eps_high =
0.2, KL to the reference model with beta = 0.001, 8 rollouts per prompt, temperature 1.0, rollouts under block
masking (keep 0), batch-level advantage normalisation, group-total loss normalisation, grad clip 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.train.config import Optim, Recipe, build_section, read_values

ENGINES = ("reference", "vllm")
LOSSES = ("cispo", "grpo")


@dataclass(slots=True)
class Rollout:
    group_size: int = 8  # rollouts per prompt
    prompts_per_step: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 1024
    max_block_tokens: int | None = None  # the paper capped blocks at 7K tokens (fewer, longer blocks otherwise)
    engine: str = "reference"  # or vllm: the extension, its weights replaced after every update (temperature 1)
    batch_size: int = 64  # the reference engine's slots

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise MementoError(f"engine must be one of {', '.join(ENGINES)}, got '{self.engine}'")
        if self.group_size < 2:
            got = self.group_size
            raise MementoError(f"group_size must be at least 2 (advantages compare a prompt's rollouts), got {got}")
        if self.prompts_per_step < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise MementoError("prompts_per_step, max_new_tokens and batch_size must be positive")
        if self.temperature <= 0:
            raise MementoError(f"temperature must be positive (RL samples), got {self.temperature}")


@dataclass(slots=True)
class Loss:
    kind: str = "cispo"  # cispo (the paper's) | grpo (PPO-style clipped surrogate)
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.001  # KL(pi || reference); the paper: without it responses collapsed in length

    def __post_init__(self):
        if self.kind not in LOSSES:
            raise MementoError(f"kind must be one of {', '.join(LOSSES)}, got '{self.kind}'")
        for name in ("eps_low", "eps_high", "beta"):
            value = float(getattr(self, name))
            if value < 0:
                raise MementoError(f"{name} must be >= 0, got {value}")
            setattr(self, name, value)


@dataclass(slots=True)
class Evaluation:
    task: str | None = None  # default: the prompts' task (toy: its held-out scoring problems)
    limit: int = 64  # problems, scored greedily before training, every `every` steps and at the end
    every: int = 0  # steps; 0: before and after only
    max_new_tokens: int | None = None  # default: the rollouts'


@dataclass(slots=True)
class RLConfig(Recipe):
    model: str  # the SFT checkpoint (an HF folder with the Memento tokens)
    out: str
    prompts: str  # a `memento eval` task whose problems are the prompts, its checker the reward
    steps: int = 50
    policy: dict = field(default_factory=dict)  # EvictionPolicy of rollouts and training masks (default: keep 0)
    rollout: Rollout = field(default_factory=Rollout)
    loss: Loss = field(default_factory=Loss)
    optim: Optim = field(default_factory=lambda: Optim(lr=1e-6, warmup_ratio=0.0, schedule="constant"))
    warmup_steps: int = 0
    minibatches: int = 1  # optimizer steps per batch of rollouts (more: later ones are off-policy, clipping acts)
    evaluation: Evaluation = field(default_factory=Evaluation)
    mismatch_threshold: float = 0.05  # stop when |trainer log-prob - engine log-prob| exceeds this anywhere
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    tensorboard: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise MementoError(f"steps must be positive, got {self.steps}")
        if self.minibatches < 1 or self.rollout.prompts_per_step % self.minibatches:
            raise MementoError(
                f"minibatches ({self.minibatches}) must divide prompts_per_step ({self.rollout.prompts_per_step}): "
                "a prompt's rollouts stay in one minibatch"
            )
        if self.mismatch_threshold <= 0:
            raise MementoError(f"mismatch_threshold must be positive, got {self.mismatch_threshold}")
        self.memento_policy()  # validates

    def memento_policy(self) -> EvictionPolicy:
        """Rollouts and training masks share it: keep 0 and the model family's delimiters unless given; the rollout
        block cap on top."""
        from memento.core import presets

        base = {"keep_last_n_blocks": 0, "mask_delimiters": presets.for_model(self.model).mask_delimiters}
        try:
            policy = EvictionPolicy(**{**base, "max_block_tokens": self.rollout.max_block_tokens, **self.policy})
        except TypeError as e:
            raise MementoError(f"policy: {e}") from None
        if not policy.evicts:
            raise MementoError("policy: Memento RL rolls out with eviction (keep_last_n_blocks >= 0)")
        if policy.restart:
            raise MementoError(
                "policy: restart is not for RL: a memento is sampled while its block is visible and recomputed "
                "without it, so no single masked forward gives the log-probs it was sampled with"
            )
        return policy


def from_dict(values: dict, where: str = "recipe") -> RLConfig:
    values = dict(values)
    for name, cls in (("rollout", Rollout), ("loss", Loss), ("optim", Optim), ("evaluation", Evaluation)):
        if name in values:
            values[name] = build_section(cls, values[name], f"{where}: {name}")
    for required in ("model", "out", "prompts"):
        if required not in values:
            raise MementoError(f"{where}: missing field '{required}'")
    return build_section(RLConfig, values, where)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RLConfig:
    return from_dict(read_values(path, overrides), where=str(path))
