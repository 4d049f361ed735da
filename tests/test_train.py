"""The trainer: recipes, the dataset, the curriculum on a synthetic task, exact resume, loadable checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memento.core.chat import memento_ids
from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.core.spans import Kind
from memento.synthetic.sums import sums_traces
from memento.tokenizer import char_tokenizer
from memento.train.config import from_dict, load_recipe
from memento.train.dataset import IGNORE, Collator, build_examples
from memento.train.trainer import train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = {
    "model_type": "llama",
    "hidden_size": 48,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def recipe(out: Path, **changes) -> dict:
    values = {
        "model": "scratch",
        "tokenizer": "chars",
        "model_config": TINY,
        "out": str(out),
        "data": {"train": ["toy:sums?n=96&seed=1"], "eval_fraction": 0.25, "max_length": 400},
        "stages": [
            {"name": "stage1", "mask": "causal", "epochs": 2},
            {"name": "stage2", "mask": "memento", "epochs": 2},
        ],
        "optim": {"lr": 3e-3},
        "micro_batch_size": 8,
        "global_batch_size": 16,
        "precision": "fp32",
        "tensorboard": False,
    }
    values.update(changes)
    return values


def losses(log: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["global_step"], r["loss"]) for r in records if "loss" in r]


# -- recipes ---------------------------------------------------------------------------------------------------------
def test_shipped_recipes_load():
    paper = load_recipe(RECIPES / "qwen3-8b.yaml")
    assert paper.optim.lr == 8e-5 and paper.optim.warmup_ratio == 0.05 and paper.global_batch_size == 512
    assert [s.epochs for s in paper.stages] == [5, 5] and [s.mask for s in paper.stages] == ["causal", "memento"]
    assert paper.data.max_length == 32768 and paper.precision == "auto" and paper.gradient_checkpointing
    assert paper.optim.max_grad_norm == 1.0 and paper.optim.weight_decay == 0.0
    cpu = load_recipe(RECIPES / "cpu-tiny.yaml", ["optim.lr=1e-3", "stages.1.epochs=2", "policy.mask_delimiters=true"])
    assert cpu.optim.lr == 1e-3 and cpu.stages[1].epochs == 2
    assert cpu.memento_policy() == EvictionPolicy(0, mask_delimiters=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": [{"name": "a", "mask": "blocky"}]}, "stages\\[0\\]: mask must be one of causal, memento"),
        ({"optim": {"lr": "fast"}}, "optim: lr must be a number, got 'fast'"),
        ({"micro_batch_size": "abc"}, "micro_batch_size must be int, got 'abc'"),  # not a Python TypeError
        ({"stages": [{"name": "a", "epochs": "abc"}]}, "stages\\[0\\]: epochs must be a number, got 'abc'"),
        ({"optim": {"learning_rate": 1e-3}}, "optim: unknown field\\(s\\) learning_rate"),
        ({"policy": {"keep_last_n_blocks": -1}}, "needs eviction"),
        ({"global_batch_size": 12}, "not a multiple of micro_batch_size"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path, change, message):
    with pytest.raises(MementoError, match=message):
        config = from_dict(recipe(tmp_path, **change))
        config.accumulation()


def test_yaml_numbers_without_a_dot(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: scratch\ntokenizer: chars\nmodel_config: {model_type: llama}\nout: x\n"
        "data: {train: [a.jsonl]}\nstages: [{name: s}]\noptim: {lr: 3e-3}\n"
    )
    assert load_recipe(path).optim.lr == 3e-3


# -- the dataset -----------------------------------------------------------------------------------------------------
def test_labels_cover_the_completion_only():
    tokenizer = char_tokenizer()
    examples, counts = build_examples(sums_traces(4, seed=2), tokenizer, max_length=10_000)
    batch = Collator(tokenizer.pad_token_id, EvictionPolicy(0))(examples)
    special = memento_ids(tokenizer)
    for row, e in enumerate(examples):
        labels = batch["labels"][row]
        assert (labels[: e.completion_start] == IGNORE).all()
        assert torch.equal(labels[e.completion_start : len(e)], torch.from_numpy(e.ids[e.completion_start :]))
        assert (labels[len(e) :] == IGNORE).all()
        assert special.summary_end in labels.tolist() and special.think_end in labels.tolist()
    assert counts["examples"] == 4 and batch["pad"].any()


def test_overlong_sequences_are_truncated_at_a_memento_or_dropped():
    tokenizer = char_tokenizer()
    traces = sums_traces(20, seed=3, blocks=(4, 4))
    special = memento_ids(tokenizer)
    cut, counts = build_examples(traces, tokenizer, max_length=250, overlong="truncate")
    assert counts["truncated"] == 20 and counts["examples"] == 20
    for e in cut:
        assert len(e) <= 250 and e.spans.kind[-1] == Kind.SUMMARY_END
        ends = (e.ids == special.summary_end).sum()
        assert ends >= 1 and e.spans.count(Kind.SUMMARY).min() > 0, "whole blocks and mementos only"
    dropped, counts = build_examples(traces, tokenizer, max_length=250, overlong="drop")
    assert dropped == [] and counts["dropped"] == 20
    tiny, counts = build_examples(traces, tokenizer, max_length=60)
    assert tiny == [] and counts["dropped"] == 20, "no room for one block: dropped even when truncating"


# -- training --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def curriculum(tmp_path_factory):
    out = tmp_path_factory.mktemp("curriculum")
    return train(from_dict(recipe(out, save_every=3)), progress=False)


def test_stage2_lowers_memento_and_answer_loss_under_block_masking(curriculum):
    after1, after2 = curriculum.evals["stage1"]["memento"], curriculum.evals["stage2"]["memento"]
    print(
        f"\nheld-out loss under block masking, stage 1 only -> stage 1 + 2: memento {after1['loss/memento']:.3f} -> "
        f"{after2['loss/memento']:.3f}, answer {after1['loss/answer']:.3f} -> {after2['loss/answer']:.3f}"
    )
    assert after2["loss/memento"] < after1["loss/memento"]
    assert after2["loss/answer"] < after1["loss/answer"]
    assert after1["tokens/answer"] > 0 and after1["tokens/memento"] > 0


def test_checkpoint_loads_with_plain_transformers_and_generates(curriculum):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(curriculum.final)
    tokenizer = AutoTokenizer.from_pretrained(curriculum.final)
    assert memento_ids(tokenizer) == memento_ids(char_tokenizer())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add these numbers: 1, 2, 3."}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 20 or out[0, -1] == tokenizer.eos_token_id
    saved = load_recipe(curriculum.final / "recipe.yaml")
    assert saved.stages[1].mask == "memento"


def test_log_and_checkpoints(curriculum):
    steps = [s for s, _ in losses(curriculum.out / "log.jsonl")]
    assert (
        steps == list(range(1, len(steps) + 1)) and len(steps) == 20
    )  # 72 examples / 16 -> 5 steps x 2 epochs x 2 stages
    kept = sorted(p.name for p in (curriculum.out / "checkpoints").iterdir())
    assert kept == ["0000019-stage2", "0000020-stage2"], "keep_checkpoints=2 keeps the newest two"


@pytest.mark.parametrize("interrupt_at", [4, 8])
def test_resume_reproduces_the_uninterrupted_loss_curve(curriculum, tmp_path, interrupt_at):
    config = from_dict(recipe(tmp_path, save_every=3))

    def crash(step, record):
        if step == interrupt_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, on_step=crash)
    interrupted = losses(tmp_path / "log.jsonl")
    assert interrupted[-1][0] == interrupt_at
    resumed = train(config, resume=True, progress=False)
    expected = losses(curriculum.out / "log.jsonl")
    got = losses(tmp_path / "log.jsonl")
    assert [s for s, _ in got] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-5)
    assert resumed.evals["stage2"]["memento"]["loss/all"] == pytest.approx(
        curriculum.evals["stage2"]["memento"]["loss/all"], rel=1e-5
    )


def test_gradient_checkpointing_and_bf16_train(tmp_path):
    values = recipe(tmp_path, gradient_checkpointing=True, precision="bf16")
    values["stages"] = [{"name": "masked", "mask": "memento", "epochs": 1, "max_steps": 2}]
    run = train(from_dict(values), progress=False)
    assert all(np.isfinite(v) for _, v in losses(tmp_path / "log.jsonl"))
    assert run.precision == ("bf16", "asked for")
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {r["precision"] for r in records if "loss" in r} == {"bf16"}
    assert run.final == tmp_path / "masked" and (run.final / "model.safetensors").exists()


def test_two_process_ddp_on_cpu_through_accelerate_launch(tmp_path):
    """The same command under `accelerate launch` (2 CPU processes, gloo): no code change, one log, one model."""
    import subprocess
    import sys

    launcher = Path(sys.executable).parent / "accelerate"
    recipe = RECIPES / "cpu-tiny.yaml"
    args = ["--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    overrides = [f"out={tmp_path}", "data.train=toy:sums?n=64", "stages.0.max_steps=2", "stages.1.max_steps=2"]
    command = [str(launcher), "launch", *args, "-m", "memento", "train", "--recipe", str(recipe), "--quiet"]
    proc = subprocess.run([*command, *overrides], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("held-out loss by token kind") == 1, "only the main process reports"
    assert [s for s, _ in losses(tmp_path / "log.jsonl")] == [1, 2, 3, 4]
    assert (tmp_path / "stage2" / "model.safetensors").exists()
