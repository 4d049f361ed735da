"""The training recipe: YAML -> validated dataclasses, with `key.sub=value` overrides from the command line.

A recipe names the model (a Hugging Face folder, `smollm2`, or `scratch` with a `model_config` to build a random
model of any HF architecture), the data, the eviction policy of the Memento mask, and the stages of the curriculum:
each stage trains with `causal` or `memento` attention for some epochs and starts from the weights the previous stage
ended with (a fresh optimizer and schedule, the same hyperparameters: the paper's two-stage recipe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.core.precision import PRECISIONS
from memento.train.dataset import OVERLONG
from memento.train.masks import MASK_KINDS


@dataclass(slots=True)
class Stage:
    name: str
    mask: str = "memento"  # causal | memento
    epochs: float = 1.0
    max_steps: int | None = None  # cap on optimizer steps (for quick runs)

    def __post_init__(self):
        if self.mask not in MASK_KINDS:
            raise MementoError(f"mask must be one of {', '.join(MASK_KINDS)}, got '{self.mask}'")
        if self.epochs <= 0:
            raise MementoError(f"epochs must be positive, got {self.epochs}")


@dataclass(slots=True)
class Data:
    train: list[str] = field(default_factory=list)  # rows/segments files, or synthetic:sums?n=400
    eval: list[str] = field(default_factory=list)  # held-out files; empty: `eval_fraction` of train
    eval_fraction: float = 0.05
    max_length: int = 32768
    overlong: str = "truncate"  # truncate | drop
    format: str = "memento"  # memento | plain (the Control: the same reasoning without blocks or mementos)

    def __post_init__(self):
        if isinstance(self.train, str):
            self.train = [self.train]
        if isinstance(self.eval, str):
            self.eval = [self.eval]
        if not self.train:
            raise MementoError("data.train: give at least one file of Memento traces")
        if self.overlong not in OVERLONG:
            raise MementoError(f"data.overlong must be one of {', '.join(OVERLONG)}, got '{self.overlong}'")
        if self.format not in ("memento", "plain"):
            raise MementoError(f"data.format must be memento or plain, got '{self.format}'")
        if not 0 <= self.eval_fraction < 1:
            raise MementoError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass(slots=True)
class Optim:
    lr: float = 8e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0

    def __post_init__(self):
        for name in ("lr", "eps", "weight_decay", "warmup_ratio", "max_grad_norm"):
            try:  # YAML reads 3e-3 (no dot) as a string
                setattr(self, name, float(getattr(self, name)))
            except (TypeError, ValueError):
                raise MementoError(f"optim.{name} must be a number, got {getattr(self, name)!r}") from None
        self.betas = tuple(float(b) for b in self.betas)
        if self.schedule not in ("cosine", "linear", "constant"):
            raise MementoError(f"optim.schedule must be cosine, linear or constant, got '{self.schedule}'")


class Recipe:
    """What the recipes of `memento train` and `memento rl` share: written back as YAML next to what they made."""

    __slots__ = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["optim"]["betas"] = list(self.optim.betas)
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


@dataclass(slots=True)
class TrainConfig(Recipe):
    model: str  # HF folder, `smollm2`, or `scratch`
    out: str
    stages: list[Stage]
    data: Data
    tokenizer: str | None = None  # default: the model's folder
    model_config: dict | None = None  # for model: scratch (an HF config as a dict, with model_type)
    policy: dict = field(default_factory=dict)  # EvictionPolicy fields of the memento mask
    optim: Optim = field(default_factory=Optim)
    micro_batch_size: int = 1
    global_batch_size: int = 8
    precision: str = "auto"  # auto | bf16 | fp32 (bf16: autocast, fp32 master weights; auto: memento.core.precision)
    gradient_checkpointing: bool = False
    attn_implementation: str = "memento_sdpa"  # memento_sdpa (sdpa that skips masked work on CPU) | sdpa | eager
    # | flex_attention (CUDA)
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0  # optimizer steps; 0: at the end of each stage only
    save_every: int = 0  # optimizer steps; 0: at the end of each stage only
    keep_checkpoints: int = 2
    tensorboard: bool = True

    def __post_init__(self):
        if not self.stages:
            raise MementoError("stages: give at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise MementoError(f"stages: names must be unique, got {names}")
        if self.precision not in PRECISIONS:
            raise MementoError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.model == "scratch" and not self.model_config:
            raise MementoError("model: scratch needs model_config (an HF config with model_type)")
        if self.micro_batch_size < 1 or self.global_batch_size < self.micro_batch_size:
            raise MementoError("batch sizes: need 1 <= micro_batch_size <= global_batch_size")
        self.memento_policy()  # validates
        if self.data.format == "plain" and any(s.mask == "memento" for s in self.stages):
            raise MementoError("data.format plain has no blocks to mask: train it with causal stages only")

    def preset(self):
        """The model family's preset (`memento.core.presets`), from the model folder's config or `model_config`."""
        from memento.core import presets

        if self.model == "scratch":
            return presets.for_model_type((self.model_config or {}).get("model_type"))
        if self.model == "smollm2":
            return presets.DEFAULT
        return presets.for_model(self.model)

    def memento_policy(self) -> EvictionPolicy:
        """The policy of the memento mask: `policy`, with `mask_delimiters` from the family's preset unless given."""
        try:
            policy = EvictionPolicy(**{"mask_delimiters": self.preset().mask_delimiters, **self.policy})
        except TypeError as e:
            raise MementoError(f"policy: {e}") from None
        if not policy.evicts:
            raise MementoError("policy: the memento mask needs eviction (keep_last_n_blocks >= 0)")
        return policy

    def accumulation(self, world_size: int = 1) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise MementoError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size x processes = "
                f"{per_step}"
            )
        return self.global_batch_size // per_step

    def steps(self, stage: Stage, n_examples: int) -> int:
        """Optimizer steps of `stage` on `n_examples` training examples."""
        per_epoch = max(1, math.ceil(n_examples / self.global_batch_size))
        steps = max(1, math.ceil(per_epoch * stage.epochs))
        return min(steps, stage.max_steps) if stage.max_steps else steps


def _typed(name: str, value, annotation: str, where: str):
    """`value` of a field annotated `annotation` (int, float, bool, optionally `| None`), or a clear error naming the
    field: a recipe or an override of the wrong type (`steps=abc`) must not surface as a Python comparison error."""
    kind, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return value
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        if isinstance(value, str):  # YAML reads 3e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        return value
    if not ok:
        raise MementoError(f"{where}: {name} must be {'a number' if kind == 'float' else kind}, got {value!r}")
    return value


def build_section(cls, values: dict, where: str):
    """`cls(**values)` with every field checked (name and type), errors naming `where`."""
    if not isinstance(values, dict):
        raise MementoError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    unknown = sorted(set(values) - names)
    if unknown:
        raise MementoError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {k: _typed(k, v, str(fields[k].type), where) for k, v in values.items()}
    try:
        return cls(**values)
    except MementoError as e:
        raise MementoError(f"{where}: {e}") from None
    except TypeError as e:  # a required field is missing
        raise MementoError(f"{where}: {e}") from None


def from_dict(values: dict, where: str = "recipe") -> TrainConfig:
    values = dict(values)
    if "stages" in values:
        stages = values["stages"]
        if not isinstance(stages, list):
            raise MementoError(f"{where}: stages must be a list")
        values["stages"] = [build_section(Stage, s, f"{where}: stages[{i}]") for i, s in enumerate(stages)]
    if "data" in values:
        values["data"] = build_section(Data, values["data"], f"{where}: data")
    if "optim" in values:
        values["optim"] = build_section(Optim, values["optim"], f"{where}: optim")
    for required in ("model", "out", "stages", "data"):
        if required not in values:
            raise MementoError(f"{where}: missing field '{required}'")
    return build_section(TrainConfig, values, where)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`optim.lr=1e-4`, `stages.1.epochs=2`, `data.train=[a.jsonl,b.jsonl]`: values parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MementoError(f"override '{item}': expected key=value, e.g. optim.lr=1e-4")
        node, parts = values, key.split(".")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        except (IndexError, ValueError, AttributeError):
            raise MementoError(f"override '{item}': no such place in the recipe") from None
        last = parts[-1]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise MementoError(f"override '{item}': {problem}; quote the value, e.g. {key}='[\"a?b\"]'") from None
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return values


def read_values(path: str | Path, overrides: list[str] = ()) -> dict:
    """A recipe file's values with the command line's overrides applied."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise MementoError(f"{path}: cannot read the recipe: {e}") from None
    return apply_overrides(values or {}, list(overrides))


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    return from_dict(read_values(path, overrides), where=str(path))
