"""The RL loop: rollouts with physical eviction, block-masked log-probs, CISPO updates, logged and resumable.

One step: draw `prompts_per_step` prompts from the task (a fixed order per seed, so a resumed run draws the same),
sample `group_size` rollouts of each under the Memento policy (blocks evicted as they are written) on the reference
engine or the vLLM extension (`memento.rl.rollouts`; vLLM gets the new weights after every update),
reward each with the task's checker, and recompute every rollout's token log-probs with one forward under
the stage-2 mask of its own eviction schedule. That forward sees exactly what the engine's cache held, so its
log-probs equal the ones the engine sampled with: the gap is logged every step (`mismatch_mean`, `mismatch_max`) and
the run stops when it passes `mismatch_threshold` (a mask that disagrees with the engine trains on tokens the policy
never produced under that attention). Then `minibatches` optimizer steps, CISPO by default (`memento.rl.loss`).

Why not TRL's `GRPOTrainer`: its log-probs come from its own forward with a 2-D padding mask, and its rollouts from
`generate` or its vLLM client; feeding it per-rollout 4-D eviction masks and physically evicting rollouts means
overriding its private batch-building and log-prob methods, a fork in all but name. The pieces here (rollouts with
`ReferenceEngine` or the vLLM extension, `completion_logprobs`, `policy_loss`) are what a distributed RL framework
needs: its actor generates with the vLLM extension (per-request `memento_policy`, sampled log-probs), its learner
calls `completion_logprobs` for the block-masked forward.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.core.spans import Kind, label
from memento.engine.generate import ReferenceEngine
from memento.eval.run import paired, problems_of
from memento.rl import report
from memento.rl.config import RLConfig
from memento.rl.loss import advantages, policy_loss
from memento.rl.rollouts import ReferenceRollouts, Sample, VLLMRollouts
from memento.train.masks import model_mask, recompute_triggers, schedules

log = logging.getLogger(__name__)


@dataclass
class Rollouts:
    """One step's rollouts, a prompt's `group_size` rollouts adjacent."""

    generations: list[Sample]
    rewards: torch.Tensor  # (N,)
    group: torch.Tensor  # (N,) the prompt of each rollout

    def logprobs(self) -> list[torch.Tensor]:
        return [torch.tensor(g.logprobs, dtype=torch.float32) for g in self.generations]


def completion_logprobs(
    model, generations: list, special, policy: EvictionPolicy, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every completion token (at `temperature`) under one forward with the Memento mask of each
    sequence's own eviction schedule: (N, C) values and (N, C) True where a completion token is. What the engine
    computed while sampling, by the masked-forward == evicted-decoding invariant."""
    seqs = [g.prompt_ids + g.ids for g in generations]
    n, length = len(seqs), max(len(s) for s in seqs)
    ids = torch.zeros(n, length, dtype=torch.long)
    pad = torch.ones(n, length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], pad[i, : len(s)] = torch.tensor(s), False
    spans = [label(s, special, len(g.prompt_ids), strict=False) for s, g in zip(seqs, generations, strict=True)]
    schedule = schedules(spans, policy, length)
    redo = recompute_triggers(spans, policy, length)
    device = next(model.parameters()).device
    redo = None if redo is None else redo.to(device)
    mask = model_mask(model, schedule.to(device), pad.to(device), policy.restart, redo)
    positions = torch.arange(length, device=device).expand(n, -1)
    logits = model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions).logits[:, :-1]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
    width = max(len(g.ids) for g in generations)
    out = torch.zeros(n, width, device=device)
    counted = torch.zeros(n, width, dtype=torch.bool, device=device)
    for i, g in enumerate(generations):
        start = len(g.prompt_ids) - 1  # logits at position t predict token t + 1
        out[i, : len(g.ids)] = logp[i, start : start + len(g.ids)]
        counted[i, : len(g.ids)] = True
    return out, counted


def chosen(generations: list, counted: torch.Tensor) -> torch.Tensor:
    """`counted` less the tokens the block cap put in place of a sampled one: the policy did not choose them, so
    they get no gradient (a forced `<|block_end|>` with a negative advantage would teach the model nothing true)."""
    out = counted.clone()
    for i, g in enumerate(generations):
        out[i, : len(g.steered)] &= ~torch.tensor(g.steered, dtype=torch.bool, device=out.device)
    return out


class RLTrainer:
    def __init__(self, config: RLConfig, progress: bool = True):
        self.config, self.progress = config, progress
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.jsonl"
        self.policy = config.memento_policy()
        self.mask_policy = self.policy  # the training masks' (tests set a wrong one: the run must refuse it)
        torch.manual_seed(config.seed)
        self.engine = ReferenceEngine.from_pretrained(config.model, self.policy)
        self.model, self.tokenizer, self.special = self.engine.model, self.engine.tokenizer, self.engine.special
        self.reference = copy.deepcopy(self.model).eval() if config.loss.beta > 0 else None
        self.task, self.problems = problems_of(config.prompts)
        order = list(range(len(self.problems)))
        random.Random(config.seed).shuffle(order)
        self.order = order
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            eps=config.optim.eps,
            weight_decay=config.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if config.rollout.engine == "vllm":
            context = getattr(self.model.config, "max_position_embeddings", None) or 4096
            args = (config.model, self.tokenizer, self.policy, config.rollout, context, config.seed)
            self.rollouter = VLLMRollouts(*args)
        else:
            self.rollouter = ReferenceRollouts(self.engine, config.rollout)
        self.writer = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def _lr_factor(self, update: int) -> float:
        total = self.config.steps * self.config.minibatches
        warm = self.config.warmup_steps * self.config.minibatches
        if update < warm:
            return (update + 1) / warm
        if self.config.optim.schedule == "constant":
            return 1.0
        progress = (update - warm) / max(1, total - warm)
        return 0.5 * (1 + np.cos(np.pi * progress)) if self.config.optim.schedule == "cosine" else 1 - progress

    # -- one step ------------------------------------------------------------------------------------------------

    def prompts(self, step: int) -> list:
        k = self.config.rollout.prompts_per_step
        return [self.problems[self.order[(step * k + i) % len(self.order)]] for i in range(k)]

    def rollouts(self, step: int) -> Rollouts:
        r = self.config.rollout
        problems = self.prompts(step)
        texts = [p.prompt for p in problems for _ in range(r.group_size)]
        seeds = [self.config.seed * 1_000_003 + step * 10_007 + i for i in range(len(texts))]
        generations = self.rollouter.sample(texts, seeds)
        asked = [p for p in problems for _ in range(r.group_size)]
        rewards = [float(self.task.check(p, g.text).correct) for p, g in zip(asked, generations, strict=True)]
        group = torch.arange(len(problems)).repeat_interleave(r.group_size)
        return Rollouts(generations, torch.tensor(rewards), group)

    def step(self, step: int) -> dict:
        c = self.config
        started = time.perf_counter()
        batch = self.rollouts(step)
        rolled = time.perf_counter()
        temperature = c.rollout.temperature
        device = next(self.model.parameters()).device
        adv = advantages(batch.rewards, c.rollout.group_size).to(device)
        group = batch.group.to(device)
        gens, mask_policy = batch.generations, self.mask_policy
        with torch.no_grad():
            old, counted = completion_logprobs(self.model, gens, self.special, mask_policy, temperature)
            ref = None
            if self.reference is not None:
                ref, _ = completion_logprobs(self.reference, gens, self.special, mask_policy, temperature)
        sampled = torch.zeros_like(old)
        for i, lp in enumerate(batch.logprobs()):
            sampled[i, : len(lp)] = lp
        gap = (old - sampled).abs()[counted]
        counted = chosen(gens, counted)
        record = {"step": step + 1, "mismatch_mean": float(gap.mean()), "mismatch_max": float(gap.max())}
        if record["mismatch_max"] > c.mismatch_threshold:
            raise MementoError(
                f"step {step + 1}: the trainer's block-masked log-probs differ from the engine's by up to "
                f"{record['mismatch_max']:.3g} (threshold {c.mismatch_threshold}): the training mask does not match "
                "what the engine's cache held (policy, labels or attention implementation); stopping"
            )
        per = len(batch.generations) // c.minibatches
        kls, clips, losses = [], [], []
        for m in range(c.minibatches):
            rows = slice(m * per, (m + 1) * per)
            gens = batch.generations[rows]
            logp, _ = completion_logprobs(self.model, gens, self.special, self.mask_policy, temperature)
            width = logp.shape[1]
            terms = policy_loss(
                logp,
                old[rows, :width],
                None if ref is None else ref[rows, :width],
                adv[rows],
                counted[rows, :width],
                group[rows],
                c.loss.kind,
                c.loss.eps_low,
                c.loss.eps_high,
                c.loss.beta,
            )
            self.optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            kls.append(terms.kl)
            clips.append(terms.clipped)
            losses.append(float(terms.loss.detach()))
        self.rollouter.sync(self.model)  # the next rollouts sample from the updated weights
        blocks = [label(g.prompt_ids + g.ids, self.special, len(g.prompt_ids), strict=False) for g in batch.generations]
        lengths = np.concatenate([s.count(Kind.BLOCK) for s in blocks]) if blocks else np.zeros(0)
        record |= {
            "reward": float(batch.rewards.mean()),
            "accuracy": float((batch.rewards > 0).float().mean()),
            "loss": float(np.mean(losses)),
            "kl": float(np.mean(kls)),
            "clip_fraction": float(np.mean(clips)),
            "grad_norm": float(norm),
            "lr": self.scheduler.get_last_lr()[0],
            "kv_peak_mean": float(np.mean([g.peak_kv_tokens for g in batch.generations])),
            "kv_peak_max": int(max(g.peak_kv_tokens for g in batch.generations)),
            "blocks_per_rollout": float(np.mean([g.blocks for g in batch.generations])),
            "block_length": float(lengths.mean()) if len(lengths) else 0.0,
            "completion_tokens": float(np.mean([len(g.ids) for g in batch.generations])),
            "capped_blocks": float(np.mean([sum(g.steered) for g in batch.generations])),
            "rollout_seconds": round(rolled - started, 2),
            "seconds": round(time.perf_counter() - started, 2),
        }
        return record

    # -- evaluation, logging, checkpoints ------------------------------------------------------------------------

    def evaluate(self, name: str) -> dict:
        """Greedy accuracy on the evaluation problems (`memento eval`'s harness and records), under the policy."""
        from memento.eval import run
        from memento.eval.settings import EvalSettings

        e = self.config.evaluation
        folder = self.out / "eval" / name
        shutil.rmtree(folder, ignore_errors=True)
        self.model.save_pretrained(self.out / "eval" / "model")
        self.tokenizer.save_pretrained(self.out / "eval" / "model")
        policy = replace(self.policy, max_block_tokens=None)
        settings = EvalSettings(
            str(self.out / "eval" / "model"),
            e.task or self.config.prompts.partition("?")[0],
            max_new_tokens=e.max_new_tokens or self.config.rollout.max_new_tokens,
            policy=policy,
        )
        summary = run.evaluate(settings, folder, e.limit, 32, progress=False, save_every=e.limit)
        records = run.read_records(folder)
        return {"name": name, "accuracy": summary["pass@1"], "records": records, "summary": summary}

    def _earlier(self, name: str) -> dict | None:
        """An evaluation an earlier run of this out folder made (None: there is none)."""
        from memento.eval import run

        folder = self.out / "eval" / name
        if not (folder / "summary.json").exists():
            return None
        summary = json.loads((folder / "summary.json").read_text())
        return {"name": name, "accuracy": summary["pass@1"], "records": run.read_records(folder), "summary": summary}

    def _log(self, record: dict) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.writer.add_scalar(f"rl/{key}", value, record["step"])

    def _checkpoint(self, step: int) -> None:
        path = self.out / "checkpoints" / f"{step:07d}"
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        torch.save(
            {
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
            },
            path / "rl_state.pt",
        )
        self.config.save(path / "recipe.yaml")
        for old in sorted((self.out / "checkpoints").iterdir())[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)

    def _resume(self) -> int:
        found = sorted((self.out / "checkpoints").glob("*/rl_state.pt"))
        if not found:
            log.warning("--resume: no checkpoint under %s, starting from the recipe's model", self.out / "checkpoints")
            return 0
        path = found[-1].parent
        state = torch.load(path / "rl_state.pt", weights_only=False)
        saved = type(self.model).from_pretrained(path, dtype=next(self.model.parameters()).dtype)  # sharded or not
        self.model.load_state_dict(saved.state_dict())  # strict: every weight of the checkpoint, or an error
        del saved
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        lines = self.log_path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= state["step"]]
        self.log_path.write_text("".join(line + "\n" for line in kept))
        log.info("resuming from %s (step %d)", path, state["step"])
        return state["step"]

    def run(self, resume: bool = False, evaluate: bool = True) -> dict:
        """Train for `steps` steps (from the newest checkpoint with `resume`); score before and after. Returns the
        summary written to `summary.json`."""
        from tqdm.auto import tqdm

        c = self.config
        start = self._resume() if resume else 0
        if start:
            self.rollouter.sync(self.model)
        else:
            self.log_path.write_text("")
        before = None
        if evaluate and start:  # resumed: the evaluation before training was made by the first run
            before = self._earlier("before")
        elif evaluate:
            before = self.evaluate("before")
            self._log({"step": 0, "eval_accuracy": before["accuracy"]})
        bar = tqdm(range(start, c.steps), desc="rl steps", disable=not self.progress, initial=start, total=c.steps)
        for step in bar:
            record = self.step(step)
            if c.evaluation.every and (step + 1) % c.evaluation.every == 0 and step + 1 < c.steps:
                record["eval_accuracy"] = self.evaluate(f"step-{step + 1}")["accuracy"]
            self._log(record)
            bar.set_postfix(reward=f"{record['reward']:.2f}", mismatch=f"{record['mismatch_max']:.1e}")
            if (c.save_every and (step + 1) % c.save_every == 0) or step + 1 == c.steps:
                self._checkpoint(step + 1)  # the last one too: a finished run can be extended with more steps
        final = self.out / "final"
        self.model.save_pretrained(final)
        self.tokenizer.save_pretrained(final)
        c.save(final / "recipe.yaml")
        summary: dict = {"steps": c.steps, "final": str(final)}
        if evaluate:
            after = self.evaluate("after")
            self._log({"step": c.steps, "eval_accuracy": after["accuracy"]})
            summary["after"] = after["accuracy"]
            summary["peak_kv_after"] = after["summary"].get("peak_kv_tokens")
            if before is not None:
                summary["before"] = before["accuracy"]
                summary["peak_kv_before"] = before["summary"].get("peak_kv_tokens")
                difference = paired(after["records"], before["records"])
                summary["difference"] = None if difference is None else difference._asdict()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        summary["report"] = str(report.write(self.out))
        if self.writer is not None:
            self.writer.close()
        self.rollouter.close()
        return summary
