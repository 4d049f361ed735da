"""The toy experiments, each a function: train the model variants, score them, the restart ablation, the probe.

Model variants (the paper's comparisons, on one task, one tiny model config, one seed):

    control        the same reasoning as plain chain of thought, causal attention, 2T steps (the paper's Control)
    stage1         Memento format, causal attention, T steps (the first half of the curriculum)
    curriculum     stage1, then T steps under block masking from its weights (the paper's recipe)
    stage2-total   block masking from scratch for 2T steps: equal *total* compute with the curriculum
    stage2-only    block masking from scratch for T steps: equal *stage-2* compute with the curriculum

Every variant goes through the real trainer (`memento.train`), and every score through the reference engine.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import yaml

from memento.core.intervals import Difference
from memento.core.policy import EvictionPolicy
from memento.eval.run import paired
from memento.synthetic.tasks import held_out
from memento.toy.evaluate import Scores, evaluate

log = logging.getLogger(__name__)

EVICT = EvictionPolicy(0, mask_delimiters=True)  # the toy's policy: blocks leave with their delimiters
FULL = EvictionPolicy(-1)
RESTART = EvictionPolicy(0, mask_delimiters=True, restart=True)

MODEL_CONFIG = {  # the paper's toy size: 4 layers, d=128 (~0.87M parameters with the character vocabulary)
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


class Variant(NamedTuple):
    name: str
    plain: bool  # trained on the Control format
    stages: tuple[tuple[str, int], ...]  # (mask, units of T steps)
    about: str


VARIANTS = (
    Variant("control", True, (("causal", 2),), "plain chain of thought, causal, 2T steps"),
    Variant("stage1", False, (("causal", 1),), "Memento format, causal, T steps"),
    Variant("curriculum", False, (("causal", 1), ("memento", 1)), "stage 1 (T) then block masking (T)"),
    Variant("stage2-total", False, (("memento", 2),), "block masking only, 2T steps (equal total compute)"),
    Variant("stage2-only", False, (("memento", 1),), "block masking only, T steps (equal stage-2 compute)"),
)
BY_NAME = {v.name: v for v in VARIANTS}


@dataclass(frozen=True, slots=True)
class Size:
    """How much one run does: training traces, T (optimizer steps per unit), batch, problems scored, probe traces."""

    train: int
    steps: int
    batch: int
    micro_batch: int
    problems: int
    probe_traces: int
    max_new_tokens: int = 1024


def recipe(variant: Variant, task: str, size: Size, out: Path, seed: int = 0) -> dict:
    """The training recipe of a variant, as `memento train` reads it (saved next to the model by the trainer)."""
    stages = []
    for mask, units in variant.stages:  # a stage's model lands in out/<variant>/<stage name>/
        name = ("stage1" if mask == "causal" else "stage2") if len(variant.stages) > 1 else variant.name
        stages.append({"name": name, "mask": mask, "epochs": 1000, "max_steps": units * size.steps})
    return {
        "model": "scratch",
        "tokenizer": "chars",
        "model_config": copy.deepcopy(MODEL_CONFIG),
        "out": str(out / variant.name),
        "data": {
            "train": [f"toy:{task}?n={size.train}&seed={seed}"],
            "eval_fraction": 0.02,
            "max_length": MODEL_CONFIG["max_position_embeddings"],
            "format": "plain" if variant.plain else "memento",
        },
        "policy": {"keep_last_n_blocks": EVICT.keep_last_n_blocks, "mask_delimiters": EVICT.mask_delimiters},
        "stages": stages,
        "optim": {"lr": 3e-3, "warmup_ratio": 0.05},
        "micro_batch_size": size.micro_batch,
        "global_batch_size": size.batch,
        "precision": "auto",  # bf16 only where the CPU runs it natively (memento.core.precision)
        "seed": seed,
        "log_every": 5,
        "save_every": max(size.steps // 3, 1),
        "keep_checkpoints": 1,
        "tensorboard": False,
    }


def train_variants(task: str, size: Size, out: Path, seed: int = 0, names=None, progress: bool = False) -> dict:
    """Train the variants (all, or `names`); return {name: HF model folder}. stage1 is the curriculum's first stage
    when both are asked for, so it is trained once."""
    from memento.train.config import from_dict
    from memento.train.trainer import train

    names = list(names or BY_NAME)
    folders = {}
    for name in names:
        if name == "stage1" and "curriculum" in names:
            continue
        variant = BY_NAME[name]
        config = from_dict(recipe(variant, task, size, out, seed))
        saved = Path(config.out) / "recipe.yaml"
        same = saved.exists() and yaml.safe_load(saved.read_text()) == config.to_dict()
        if not same:  # another recipe's run (or a run killed before it began): its checkpoints must not be resumed
            shutil.rmtree(config.out, ignore_errors=True)
        log.info("training %s (%s)%s", name, variant.about, ", resuming" if same else "")
        run = train(config, resume=same, progress=progress)  # a finished run with the same recipe is reused
        folders[name] = run.final
        if name == "curriculum":
            folders["stage1"] = run.out / "stage1"
    return {n: folders[n] for n in names}


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


class Accuracy(NamedTuple):
    """One variant's scores: with full attention, with eviction (Memento variants), with restart (if asked)."""

    name: str
    full: Scores | None
    evict: Scores | None
    restart: Scores | None = None


def accuracy(folders: dict, task: str, size: Size, out: Path, restart_for=("curriculum",)) -> list[Accuracy]:
    """Score every model on the same `size.problems` problems, the first of the task's held-out scoring set (never
    trained on: `toy:TASK` in `memento eval`), each run into `out/<model>-<full|evict|restart>`."""
    results = []
    for name, folder in folders.items():
        plain = BY_NAME[name].plain if name in BY_NAME else False

        def run(mode, policy, name=name, folder=folder, plain=plain):
            return evaluate(folder, task, policy, out / f"{name}-{mode}", size.problems, 32, size.max_new_tokens, plain)

        full = run("full", FULL)
        evict = None if plain else run("evict", EVICT)
        again = run("restart", RESTART) if name in restart_for else None
        results.append(Accuracy(name, full, evict, again))
        log.info("%s: full %.3f, evict %s", name, full.accuracy, None if evict is None else f"{evict.accuracy:.3f}")
    return results


def difference(a: Scores, b: Scores) -> Difference:
    """a minus b, paired over the same problems (`memento.eval.run.paired`)."""
    return paired(a.records, b.records)


def restart_effect(result: Accuracy) -> Difference:
    """Restart minus normal eviction, paired over the same problems (the paper: -15.3 pp on AIME24, Qwen3-8B)."""
    return difference(result.restart, result.evict)


def probe(folder: Path, task: str, size: Size, seed: int = 20_000, block: int = 1) -> dict:
    """The leakage probe on `folder`'s model: a passcode digit in block `block` (0-based) of fresh traces, probed
    from every memento and layer, with normal eviction and with restart. Returns {"evict": Leakage, "restart": ...}."""
    from memento.probe.leakage import leakage
    from memento.synthetic.orbit import with_note

    model, tokenizer = load(folder)
    traces = held_out(task, size.probe_traces, seed, notes=0.0)  # orbit only: its note carries the passcode
    digits = np.random.default_rng(seed).integers(0, 10, len(traces)).tolist()
    marked = [with_note(t, block, d) for t, d in zip(traces, digits, strict=True)]
    return {
        mode: leakage(model, tokenizer, marked, digits, policy, block)
        for mode, policy in (("evict", EVICT), ("restart", RESTART))
    }
