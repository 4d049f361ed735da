"""The curriculum trainer: stages of causal then Memento-masked SFT on any HF causal LM, built on accelerate.

Design choices:
- One optimizer step = `global_batch_size` examples, split into micro-batches over processes and accumulation
  steps; the loss is the token-weighted mean over the whole step, so the result does not depend on the split.
- Each stage is its own run (fresh AdamW and schedule, same hyperparameters) started from the weights the previous
  stage ended with. Data order is a pure function of (seed, stage, epoch), so a resumed run sees the batches the
  uninterrupted one would have.
- Checkpoints are Hugging Face folders (`save_pretrained` + tokenizer with the Memento chat template, loadable by
  transformers and vLLM) plus `state/` (optimizer, schedule, RNG via `accelerator.save_state`, weights not
  duplicated), the resolved recipe and `trainer_state.json`. `resume` continues from the newest one and cuts the
  log back to it, so the log equals that of an uninterrupted run.
- Multi-GPU (DDP / FSDP / DeepSpeed) comes from `accelerate launch`; nothing here depends on the process count
  except the accumulation steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from memento.core.errors import MementoError
from memento.core.precision import Choice, resolve
from memento.train.config import Stage, TrainConfig
from memento.train.dataset import IGNORE, Collator, Example, load_examples
from memento.train.losses import evaluate, token_losses
from memento.train.model import load_model

log = logging.getLogger(__name__)


class Run(NamedTuple):
    out: Path
    final: Path  # the HF folder of the last stage
    evals: dict  # stage name -> mask -> token kind -> mean loss
    counts: dict  # dataset counts (examples, truncated, dropped, eval)
    main_process: bool = True  # False on the other ranks of a multi-process launch
    precision: Choice | None = None  # what the run trained in, and why


def _step_batches(config: TrainConfig, stage_index: int, n: int, steps: int, rank: int, world: int):
    """Per optimizer step, this process's list of micro-batches (lists of example indices)."""
    out, epoch = [], 0
    while len(out) < steps:
        order = np.random.default_rng([config.seed, stage_index, epoch]).permutation(n)
        for start in range(0, n, config.global_batch_size):
            chunk = order[start : start + config.global_batch_size][rank::world]
            micro = [
                chunk[i : i + config.micro_batch_size].tolist() for i in range(0, len(chunk), config.micro_batch_size)
            ]
            out.append(micro)
            if len(out) == steps:
                break
        epoch += 1
    return out


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = np.random.default_rng([seed, 12345]).permutation(len(examples))
    n_eval = round(len(examples) * fraction)
    held = set(order[:n_eval].tolist())
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in (out / "checkpoints").glob("*/trainer_state.json")]
    return sorted(
        (p.parent for p in found), key=lambda p: json.loads((p / "trainer_state.json").read_text())["global_step"]
    )


def _trim_log(path: Path, global_step: int) -> None:
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line).get("global_step", 0) <= global_step]
    path.write_text("".join(line + "\n" for line in keep))


class Trainer:
    def __init__(self, config: TrainConfig, progress: bool = True):
        from accelerate.utils import set_seed

        self.config = config
        self.out = Path(config.out)
        self.precision = resolve(config.precision)
        self.accelerator = self._accelerator()
        self.progress = progress and self.accelerator.is_main_process
        set_seed(config.seed)
        self.policy = config.memento_policy()
        self.log_path = self.out / "log.jsonl"
        self.writer = None

    def _accelerator(self):
        """A fresh Accelerator (one per stage: each stage has its own optimizer and schedule to save)."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        precision = "bf16" if self.precision.precision == "bf16" else "no"
        if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
            AcceleratorState._reset_state()  # an earlier run in this process used another precision
        acc = Accelerator(mixed_precision=precision)
        acc.register_save_state_pre_hook(lambda models, weights, out: weights.clear())  # weights: save_pretrained
        acc.register_load_state_pre_hook(lambda models, out: models.clear())  # loaded by `load_model`
        return acc

    # -- data -----------------------------------------------------------------------------------------------------
    def load_data(self, tokenizer) -> dict:
        c = self.config.data
        plain = c.format == "plain"
        examples, counts = load_examples(c.train, tokenizer, c.max_length, c.overlong, plain)
        if c.eval:
            held, _ = load_examples(c.eval, tokenizer, c.max_length, c.overlong, plain)
        else:
            examples, held = _split(examples, c.eval_fraction, self.config.seed)
        if not examples:
            raise MementoError("no training examples left (all dropped as too long, or all held out)")
        self.train_set, self.eval_set = examples, held
        return {**counts, "train": len(examples), "eval": len(held)}

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, resume: bool | str = False, on_step: Callable[[int, dict], None] | None = None) -> Run:
        config, acc = self.config, self.accelerator
        start = self._resume_point(resume)
        self.out.mkdir(parents=True, exist_ok=True)
        if start is None and self.log_path.exists() and acc.is_main_process:
            self.log_path.unlink()
        source = start["path"] if start else None
        model, tokenizer = load_model(config, weights=source)
        counts = self.load_data(tokenizer)
        if acc.is_main_process:
            config.save(self.out / "recipe.yaml")
            if config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
        log.info("training on %d examples, %d held out, in %s (%s)", counts["train"], counts["eval"], *self.precision)
        evals, global_step, final = {}, 0, None
        for index, stage in enumerate(config.stages):
            steps = config.steps(stage, len(self.train_set))
            if start and index < start["stage_index"]:
                global_step += steps
                final = self.out / stage.name
                continue
            skip = start["step"] if start and index == start["stage_index"] else 0
            state_dir = start["path"] / "state" if skip else None
            model = self._stage(model, tokenizer, index, stage, steps, skip, state_dir, global_step, on_step)
            global_step += steps
            start = None
            final = self.out / stage.name
            self._save_model(model, tokenizer, final)
            evals[stage.name] = self._evaluate(model, stage, global_step)
        if self.writer:
            self.writer.close()
        return Run(self.out, final, evals, counts, self.accelerator.is_main_process, self.precision)

    def _stage(self, model, tokenizer, index, stage: Stage, steps, skip, state_dir, offset, on_step):
        from transformers import get_scheduler

        config = self.config
        acc = self.accelerator = self._accelerator()
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            eps=config.optim.eps,
            weight_decay=config.optim.weight_decay,
        )
        name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[config.optim.schedule]
        warmup = math.ceil(config.optim.warmup_ratio * steps)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
        model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        if state_dir is not None:
            acc.load_state(str(state_dir))
        collate = Collator(tokenizer.pad_token_id, None if stage.mask == "causal" else self.policy)
        plan = _step_batches(config, index, len(self.train_set), steps, acc.process_index, acc.num_processes)
        bar = tqdm(total=steps, initial=skip, desc=stage.name, disable=not self.progress, dynamic_ncols=True)
        model.train()
        started, seen = time.perf_counter(), 0
        for step in range(skip, steps):
            batches = [collate([self.train_set[i] for i in micro]) for micro in plan[step]]
            tokens = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
            total = 0.0
            for n, batch in enumerate(batches):
                sync = n == len(batches) - 1
                context = acc.no_sync(model) if not sync else contextlib.nullcontext()
                with context, acc.autocast():
                    losses, _ = token_losses(model, batch, stage.mask, self.policy.restart, acc.device)
                    loss = losses.sum() / max(tokens, 1)
                acc.backward(loss)
                total += float(loss.detach())
            norm = acc.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += tokens
            rate = seen / max(time.perf_counter() - started, 1e-9)
            record = {
                "stage": stage.name,
                "step": step + 1,
                "global_step": offset + step + 1,
                "loss": total,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(norm),
                "tokens": tokens,
                "tokens_per_s": rate,
                "precision": self.precision.precision,
            }
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}", tok_s=f"{rate:,.0f}")
            if (step + 1) % config.log_every == 0 or step + 1 == steps:
                self._log(record)
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < steps:
                self._evaluate(model, stage, offset + step + 1)
            if (config.save_every and (step + 1) % config.save_every == 0) or step + 1 == steps:
                self._checkpoint(model, tokenizer, index, stage, step + 1, steps, offset + step + 1)
            if on_step is not None:
                on_step(offset + step + 1, record)
        bar.close()
        return acc.unwrap_model(model)

    # -- evaluation, logging, checkpoints -------------------------------------------------------------------------
    def _evaluate(self, model, stage: Stage, global_step: int) -> dict:
        if not self.eval_set:
            return {}
        pad = self.accelerator.unwrap_model(model).config.pad_token_id
        masks = ("causal",) if self.config.data.format == "plain" else ("causal", "memento")
        size = self.config.micro_batch_size
        result = evaluate(model, self.eval_set, self.policy, size, self.accelerator, pad, masks)
        self._log({"stage": stage.name, "global_step": global_step, "eval": result})
        return result

    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        step = record["global_step"]
        if "eval" in record:
            for mask, kinds in record["eval"].items():
                for kind, value in kinds.items():
                    if kind.startswith("loss/"):
                        self.writer.add_scalar(f"eval/{mask}/{kind[5:]}", value, step)
        else:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                self.writer.add_scalar(f"train/{key}", record[key], step)

    def _save_model(self, model, tokenizer, path: Path) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        unwrapped = acc.unwrap_model(model)
        unwrapped.save_pretrained(
            path, state_dict=acc.get_state_dict(model), is_main_process=acc.is_main_process, save_function=acc.save
        )
        if acc.is_main_process:
            tokenizer.save_pretrained(path)
            self.config.save(path / "recipe.yaml")

    def _checkpoint(self, model, tokenizer, index, stage, step, steps, global_step) -> None:
        path = self.out / "checkpoints" / f"{global_step:07d}-{stage.name}"
        self._save_model(model, tokenizer, path)
        self.accelerator.save_state(str(path / "state"))
        if self.accelerator.is_main_process:
            state = {
                "stage_index": index,
                "stage": stage.name,
                "step": step,
                "steps": steps,
                "global_step": global_step,
            }
            (path / "trainer_state.json").write_text(json.dumps(state, indent=1))
            for old in _checkpoints(self.out)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)

    def _resume_point(self, resume: bool | str) -> dict | None:
        if not resume:
            return None
        found = [Path(resume)] if isinstance(resume, str | Path) else _checkpoints(self.out)
        if not found:
            log.warning("--resume: no checkpoint under %s, starting from scratch", self.out / "checkpoints")
            return None
        path = found[-1]
        state = json.loads((path / "trainer_state.json").read_text())
        if state["step"] >= state["steps"]:  # the stage was finished: start the next one fresh
            state = {**state, "stage_index": state["stage_index"] + 1, "step": 0}
        if self.accelerator.is_main_process:
            _trim_log(self.log_path, state["global_step"])
        log.info("resuming from %s (global step %d)", path, state["global_step"])
        return {**state, "path": path}


def train(config: TrainConfig, resume: bool | str = False, progress: bool = True, on_step=None) -> Run:
    """Run every stage of `config` (see `Trainer`); `on_step(global_step, record)` is called after each step."""
    return Trainer(config, progress).run(resume, on_step)
