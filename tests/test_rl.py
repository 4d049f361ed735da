"""`memento rl`: the objective's pieces, and short real runs on the shipped toy checkpoint (rollouts with eviction on
the reference engine, block-masked log-probs, updates, evaluation, checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.rl import report
from memento.rl.config import from_dict, load_recipe
from memento.rl.loss import advantages, policy_loss
from memento.rl.trainer import RLTrainer, chosen, completion_logprobs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "rl-toy.yaml"
SMALL = ["steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=900"]


def test_advantages_are_centred_per_prompt_and_scaled_over_the_batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # two prompts of 4 rollouts
    a = advantages(rewards, 4)
    assert torch.allclose(a[4:], torch.zeros(4))  # all right: nothing to learn from that prompt
    assert a[0] > 0 > a[1] and torch.allclose(a[1:4], a[1].expand(3))
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    assert torch.allclose(a, centred / centred.std(unbiased=False), atol=1e-5)


def test_cispo_keeps_a_clipped_weight_without_gradient_and_grpo_drops_clipped_tokens():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0]])  # token 0: ratio e^0.5 = 1.65, outside 1 +- 0.2
    mask, group, adv = torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, dtype=torch.long), torch.tensor([1.0])
    cispo = policy_loss(logp, old, None, adv, mask, group, "cispo")
    (grad,) = torch.autograd.grad(cispo.loss, logp)
    assert torch.allclose(grad, torch.tensor([[-1.2 / 2, -1.0 / 2]]))  # -clip(r) x A / tokens, r held constant
    assert cispo.clipped == 0.5
    grpo = policy_loss(logp, old, None, adv, mask, group, "grpo")
    (grad,) = torch.autograd.grad(grpo.loss, logp)
    assert grad[0, 0] == 0 and torch.isclose(grad[0, 1], torch.tensor(-0.5))  # clipped: no gradient (PPO)


def test_group_total_normalisation_and_the_kl_term():
    """Two prompts: one answered in 1 token, one in 3; each prompt's terms are averaged over its own tokens, then
    prompts are averaged, so the short prompt weighs as much as the long one. KL (k3) is zero at the reference."""
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    group, adv = torch.tensor([0, 1]), torch.tensor([1.0, 1.0])
    terms = policy_loss(logp, logp.detach(), logp.detach(), adv, mask, group, beta=0.5)
    (grad,) = torch.autograd.grad(terms.loss, logp)
    assert torch.allclose(grad, torch.tensor([[-0.5, 0, 0], [-1 / 6, -1 / 6, -1 / 6]]))
    assert terms.kl == 0
    shifted = policy_loss(logp, logp.detach(), logp.detach() - 1.0, adv, mask, group, beta=0.5)
    assert shifted.kl == pytest.approx(float(torch.exp(torch.tensor(-1.0)) + 1 - 1))


def test_recipe_validation_names_the_field():
    base = {"model": "memento/toy/checkpoints/curriculum", "out": "x", "prompts": "toy:orbit"}
    with pytest.raises(MementoError, match="group_size must be at least 2"):
        from_dict({**base, "rollout": {"group_size": 1}})
    with pytest.raises(MementoError, match="loss: kind must be one of cispo, grpo"):
        from_dict({**base, "loss": {"kind": "ppo"}})
    with pytest.raises(MementoError, match=r"minibatches .* must divide prompts_per_step"):
        from_dict({**base, "minibatches": 3})
    with pytest.raises(MementoError, match="unknown field"):
        from_dict({**base, "rollouts": {}})
    with pytest.raises(MementoError, match="restart is not for RL"):
        from_dict({**base, "policy": {"restart": True}})
    with pytest.raises(MementoError, match="steps must be int, got 'abc'"):  # an override of the wrong type
        from_dict({**base, "steps": "abc"})
    with pytest.raises(MementoError, match="loss: beta must be a number, got 'x'"):
        from_dict({**base, "loss": {"beta": "x"}})
    with pytest.raises(MementoError, match="engine must be one of reference, vllm, got 'tgi'"):
        from_dict({**base, "rollout": {"engine": "tgi"}})
    assert from_dict(base).memento_policy() == EvictionPolicy(0)  # the toy's folder has no family: keep 0


def test_a_short_run_learns_logs_and_resumes_exactly(tmp_path):
    """Two steps with an evaluation before and after; the mismatch of the block-masked forward stays ~0 (fp32);
    the log has every metric; a run stopped after step 1 and resumed logs what the uninterrupted one did."""
    full = load_recipe(
        RECIPE, [*SMALL, f"out={tmp_path / 'full'}", "evaluation.limit=4", "evaluation.every=1", "save_every=1"]
    )
    summary = RLTrainer(full, progress=False).run()
    assert set(summary) >= {"before", "after", "difference", "final"}
    assert (Path(summary["final"]) / "config.json").exists()
    records = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["mismatch_max"] < 1e-3 and r["blocks_per_rollout"] > 1 and r["kv_peak_max"] > 0
        assert {"kl", "clip_fraction", "block_length", "accuracy", "grad_norm", "lr"} <= set(r)
    assert (tmp_path / "full" / "tensorboard").is_dir()
    text = Path(summary["report"]).read_text()
    assert "Held-out accuracy" in text and "| blocks per rollout |" in text
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0
    assert [r["step"] for r in report.read_log(tmp_path / "full")[1]] == [0, 1, 2]  # before, mid-run, after
    more = load_recipe(RECIPE, [*SMALL, f"out={tmp_path / 'full'}", "evaluation.limit=4", "steps=3"])
    extended = RLTrainer(more, progress=False).run(resume=True)  # a finished run extended by one step
    assert extended["before"] == summary["before"] and "difference" in extended
    logged = [json.loads(line)["step"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 2, 3, 3]  # each step once, the evaluations at 0, 1 (in its step), 2 and 3

    part = load_recipe(RECIPE, [*SMALL, f"out={tmp_path / 'part'}", "save_every=1"])
    RLTrainer(load_recipe(RECIPE, [*SMALL, f"out={tmp_path / 'part'}", "save_every=1", "steps=1"]), False).run(
        evaluate=False
    )
    RLTrainer(part, progress=False).run(resume=True, evaluate=False)
    resumed = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(steps, resumed, strict=True):
        assert a["reward"] == b["reward"] and a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_the_block_cap_ends_blocks_and_its_tokens_get_no_gradient(tmp_path):
    """With `max_block_tokens` under the toy's block length, every round is cut by the cap; the cap's
    `<|block_end|>` tokens are logged and left out of the loss, the rest counted."""
    config = load_recipe(RECIPE, [*SMALL, f"out={tmp_path}", "rollout.max_block_tokens=20"])
    trainer = RLTrainer(config, progress=False)
    batch = trainer.rollouts(0)
    assert all(sum(g.steered) >= 1 for g in batch.generations)
    _, counted = completion_logprobs(trainer.model, batch.generations, trainer.special, trainer.policy)
    kept = chosen(batch.generations, counted)
    for i, g in enumerate(batch.generations):
        ends = [j for j, t in enumerate(g.ids) if t == trainer.special.block_end]
        capped = {j for j, s in enumerate(g.steered) if s}
        assert capped and capped <= set(ends)
        assert [bool(kept[i, j]) for j in range(len(g.ids))] == [j not in capped for j in range(len(g.ids))]
    record = trainer.step(1)
    assert record["capped_blocks"] >= 1 and record["mismatch_max"] < 1e-3


def test_the_run_refuses_a_training_mask_that_is_not_the_engines(tmp_path):
    """Rollouts under keep 0, a trainer masking with keep 1: its log-probs leave the engine's, and the run stops
    at the first step with the reason."""
    config = load_recipe(RECIPE, [*SMALL, f"out={tmp_path}"])
    trainer = RLTrainer(config, progress=False)
    trainer.mask_policy = EvictionPolicy(1, mask_delimiters=True)
    with pytest.raises(MementoError, match=r"differ from the engine's by up to .* the training mask does not match"):
        trainer.step(0)


@pytest.mark.slow
@pytest.mark.xdist_group("vllm")
def test_vllm_rollouts_follow_the_updated_weights(tmp_path):
    """Rollouts on the vLLM extension: a step samples under the block cap (the cap's tokens found in vLLM's
    rollouts too) and its log-probs equal the trainer's block-masked ones (fp32). Then every weight moves (the tied
    embedding and output layer included) and is synced into the running engine: vLLM samples from the moved model
    (its log-probs equal the trainer's again, and differ from the starting model's)."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    args = [*SMALL, f"out={tmp_path}", "rollout.engine=vllm", "warmup_steps=0", "minibatches=1"]
    trainer = RLTrainer(load_recipe(RECIPE, [*args, "rollout.max_block_tokens=30"]), progress=False)
    try:
        first = trainer.step(0)  # rollouts, an update (none if every group's rewards tie), the weights into vLLM
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        trainer.rollouter.sync(trainer.model)
        batch = trainer.rollouts(1)
    finally:
        trainer.rollouter.close()
    sampled = torch.nn.utils.rnn.pad_sequence(batch.logprobs(), batch_first=True)
    special, policy = trainer.special, trainer.policy
    with torch.no_grad():
        now, counted = completion_logprobs(trainer.model, batch.generations, special, policy)
        before, _ = completion_logprobs(trainer.reference, batch.generations, special, policy)
    assert first["mismatch_max"] < 2e-3 and first["blocks_per_rollout"] > 1 and first["kv_peak_max"] > 0
    assert first["capped_blocks"] >= 1
    assert float((now - sampled).abs()[counted].max()) < 2e-3  # vLLM sampled from the moved weights ...
    assert float((before - sampled).abs()[counted].max()) > 2e-2  # ... which really moved
