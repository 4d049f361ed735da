"""The real console script, run as a user would: exit codes, one-line errors, JSON keys, files written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import AIME_TRACE

MEMENTO = str(Path(sys.executable).parent / "memento")


def run(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = None if env is None else {**os.environ, **env}
    proc = subprocess.run([MEMENTO, *args], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_version_and_help_on_every_command():
    assert run("--version").stdout.startswith("memento ")
    for command in ("inspect", "kv", "demo", "audit", "data build", "train", "generate", "eval", "bench throughput"):
        assert "Usage: memento " + command in run(*command.split(), "--help").stdout


def test_default_files_of_options_ship_with_the_package():
    from memento.cli.bench import WORKED_EXAMPLE
    from memento.core.rows import read_traces

    assert read_traces(WORKED_EXAMPLE), "memento bench throughput's default --traces"


def test_kv_on_paper_trace(tmp_path, shared_examples):
    plot = tmp_path / "kv.png"
    result = json.loads(run("kv", str(AIME_TRACE), "--model", "qwen3-8b", "--plot", str(plot), "--json").stdout)
    keys = (
        "full_peak_bytes",
        "memento_peak_bytes",
        "peak_ratio",
        "full_auc_gb_ktok",
        "memento_auc_gb_ktok",
        "auc_ratio",
    )
    assert all(k in result for k in keys)
    assert 1.5 <= result["peak_ratio"] <= 2.5
    assert result["full_peak_bytes"] == 5545 * 144 * 1024  # tokens counted with the real Qwen tokenizer
    assert plot.read_bytes()[:4] == b"\x89PNG" and result["plot"] == str(plot)
    keep1 = json.loads(run("kv", str(AIME_TRACE), "--model", "qwen3-8b", "--policy", "keep1", "--json").stdout)
    assert 1 < keep1["peak_ratio"] < result["peak_ratio"]


def test_inspect_json_keys_per_trace(shared_examples):
    result = json.loads(run("inspect", str(AIME_TRACE), "--json").stdout)
    [trace] = result["traces"]
    assert trace["blocks"] == 5
    assert trace["block_tokens"] == [638, 450, 602, 1986, 517]
    assert len(trace["memento_tokens"]) == 5
    assert 0.05 < trace["compression_ratio"] < 0.3


def test_kv_with_hf_model_folder(smollm2_dir, shared_examples):
    result = json.loads(run("kv", str(AIME_TRACE), "--model", str(smollm2_dir), "--json").stdout)
    assert result["model"] == smollm2_dir.name and result["bytes_per_token"] == 30 * 2 * 3 * 64 * 2
    assert result["peak_ratio"] > 1.5


def test_audit_cli(tmp_path):
    """One experiment as a command (tiny size), then the probe as a tool on its (barely) trained model; the full demo
    runs in tests/test_demo.py."""
    printed = run("experiment", "stage2-only", "--size", "tiny", "--out", str(tmp_path)).stdout
    assert "stage2-only" in printed and "restart mode:" in printed
    experiment = json.loads((tmp_path / "stage2-only.json").read_text())
    assert experiment["headline"][0]["model"] == "stage2-only" and experiment["restart_accuracy"] is not None
    assert experiment["headline"][0]["peak_kv_tokens"] > 0
    model = experiment["model"]
    args = ("audit", "--model", str(model), "--task", "orbit", "--n", "60", "--out", str(tmp_path / "audit"))
    cost = ("--eval", "toy:orbit", "--eval-limit", "3", "--max-new-tokens", "48")
    result = json.loads(run(*args, *cost, "--json").stdout)
    assert {"evict", "restart"} <= set(result) and result["block"] == 2 and result["n_traces"] == 60
    paid = result["accuracy_cost"]
    assert paid["task"] == "toy:orbit" and Path(paid["report"]).exists()
    assert all(0 <= paid[m]["pass@1"] <= 1 and paid[m]["peak_kv_tokens"] > 0 for m in ("evict", "restart"))
    assert paid["restart_minus_evict"]["pass@1"] == pytest.approx(paid["restart"]["pass@1"] - paid["evict"]["pass@1"])
    rows = result["evict"]["rows"]
    assert {r["role"] for r in rows} >= {"causal control", "direct", "masked +1"}
    assert len(rows) == 4 * 10 and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert {r["layer"] for r in rows} == {1, 2, 3, 4}
    report = (tmp_path / "audit" / "audit.md").read_text()
    assert "| 3 | masked +1 |" in report and (tmp_path / "audit" / "audit_distance.png").stat().st_size > 0
    assert "## What strict forgetting costs: toy:orbit, 3 problems, greedy" in report and "(eval/report.md)" in report
    for args, message in (
        (["--block", "0"], "error: --block 0: blocks count from 1"),
        (["--block", "10"], "error: --block 10: orbit's passcode goes into a round before the last one, blocks 2-9"),
        (["--task", "sums"], "error: --task sums: choose digits, orbit or orbit-states, or give --traces FILE"),
        (["--traces", "nope.jsonl"], "error: --traces nope.jsonl: no such file"),
        (["--eval-limit", "0"], "error: --eval-limit 0: must be at least 1"),
    ):
        bad = run("audit", "--model", str(model), "--task", "orbit", *args, check=False)
        assert bad.returncode == 2 and bad.stderr.strip().startswith(message), bad.stderr
    assert (
        run("demo", "--ship", check=False).stderr.strip()
        == "error: --ship needs --full (it ships the models that run trains)"
    )
    bad = run("experiment", "stage3", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: experiment 'stage3': choose one of control")


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (
            ["inspect", "{f}"],
            '{"problem": "p", "response": "<think><|block_start|>x</think>A"}\n',
            "unclosed block: </think> before <|block_end|> (at character 23)",
        ),
        (
            ["kv", "{f}", "--model", "qwen9"],
            '{"problem": "p", "response": "<think></think>A"}\n',
            "unknown model preset 'qwen9'",
        ),
        (["inspect", "{f}/nope.jsonl"], None, "cannot read"),
        (["kv", "{f}", "--model", "qwen3-8b", "--policy", "keepall"], "{}", "unknown policy 'keepall'"),
        (["kv", "{f}", "--model", "qwen3-8b", "--policy", "full", "--restart"], "{}", "restart needs eviction"),
        (["inspect", "{f}"], "{oops\n", "invalid JSON"),
        (["data", "build", "{f}", "--out", "{f}.out"], '{"problem": "p"}\n', "missing field 'cot' or 'response'"),
        (["data", "build", "champ", "--out", "{f}.out", "--backend", "openai"], None, "needs --base-url and --model"),
        (
            ["inspect", "{f}"],
            json.dumps(
                {
                    "problem": "p",
                    "response": "<think><|block_start|>a<|block_end|><|summary_start|>m<|summary_end|></think>",
                    "sentences": ["a"],
                    "blocks": [[0, 3]],
                    "block_summaries": ["m"],
                }
            ),
            "field 'blocks'[0] = [0, 3] is outside the 1 sentences",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, content, message):
    f = tmp_path / "rows.jsonl"
    if content is not None:
        f.write_text(content)
    proc = run(*[a.replace("{f}", str(f if "nope" not in a else tmp_path)) for a in args], check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_train_then_generate_from_the_command_line(tmp_path):
    """`memento train` with overrides writes a loadable model; `memento generate` runs it with eviction."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "cpu-tiny.yaml"
    out = tmp_path / "run"
    overrides = [f"out={out}", "data.train=toy:sums?n=48", "stages.0.max_steps=2", "stages.1.max_steps=2"]
    proc = run("train", "--recipe", str(recipe), "--quiet", *overrides)
    assert "held-out loss by token kind" in proc.stdout and (out / "stage2" / "model.safetensors").exists()
    assert len([line for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]) == 4
    plot = tmp_path / "kv.png"
    args = ("generate", "Add these numbers: 1, 2.", "--model", str(out / "stage2"), "--max-new-tokens", "12")
    data = json.loads(run(*args, "--json", "--plot", str(plot), "--max-block-tokens", "4").stdout)
    assert data["stats"]["generated_tokens"] <= 12 and len(data["stats"]["kv_timeline"]) >= 1
    assert {"text", "trace", "stats", "finish_reason"} <= set(data) and plot.stat().st_size > 0
    assert "KV peak" in run(*args).stdout


def test_generate_and_train_errors_are_one_line(tmp_path, smollm2_dir):
    proc = run("generate", "hi", "--model", str(smollm2_dir), check=False)
    assert proc.returncode == 2 and "--add-tokens" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("generate", "hi", "--model", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "cpu-tiny.yaml"
    proc = run("train", "--recipe", str(recipe), "optim.lr=fast", check=False)
    assert proc.returncode == 2 and "optim: lr must be a number, got 'fast'" in proc.stderr
    proc = run("generate", "hi", "--model", str(smollm2_dir), "--policy", "full", "--restart", check=False)
    assert proc.returncode == 2 and "needs eviction" in proc.stderr
    proc = run("generate", "hi", "--model", str(smollm2_dir), "--forget", "(", check=False)
    assert proc.returncode == 2 and "--forget: not a valid regular expression (missing )" in proc.stderr


@pytest.fixture(scope="module")
def short_context(tmp_path_factory) -> Path:
    """The shipped toy model with a context of 64 positions (its prompts take about 30)."""
    import memento

    folder = tmp_path_factory.mktemp("toy") / "curriculum-short-context"
    shutil.copytree(Path(memento.__file__).parent / "toy" / "checkpoints" / "curriculum", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 64}))
    return folder


def test_generate_caps_new_tokens_at_the_context_and_sizes_in_one_unit(short_context):
    from memento.core.units import size

    proc = run("generate", "hi", "--model", str(short_context), "--max-new-tokens", "4096")
    prompt, room = map(int, re.search(r"the prompt takes (\d+), so at most (\d+) new tokens", proc.stderr).groups())
    assert prompt + room == 64 and "--max-new-tokens 4096: the model's context is 64 tokens" in proc.stderr
    assert int(re.search(r"(\d+) tokens \((stop|length)\)", proc.stdout)[1]) <= room
    assert re.search(r"KV peak \d+ tokens \([\d.]+ kB\)", proc.stdout), proc.stdout  # 4 KiB a token: not 0.2 MiB
    assert (size(1.4e6), size(512), size(2.5e9), size(1e6, 3e9)) == ("1.4 MB", "512 bytes", "2.5 GB", "0.001 GB")


def test_eval_says_the_context_caps_samples_and_shows_full_names(short_context, tmp_path):
    args = ["eval", "--model", str(short_context), "--task", "toy:orbit", "--limit", "1", "--protocol", "none"]
    proc = run(*args, "--max-new-tokens", "4096", "--out", str(tmp_path), "--device", "cpu", env={"COLUMNS": "80"})
    assert "\r" not in proc.stderr  # stderr is no terminal: no progress bar
    assert "…" not in proc.stdout  # names (and numbers) wrap in the table, never cut
    note = "the model's context is 64 tokens, so a sample gets at most 64 minus its prompt new tokens"
    assert f"curriculum-short-context, toy:orbit: {note} (max new tokens: 4096)" in proc.stdout
    report = (tmp_path / "report.md").read_text()
    assert note in report and "truncated: % of samples that stopped at the length limit" in report
    assert "| peak KV (kB) |" in report  # its natural unit (was: 0.0002 GB)


def test_every_bad_option_is_named_by_its_flag_with_its_value_at_once(tmp_path):
    proc = run(
        "generate",
        "hi",
        "--model",
        str(tmp_path),
        "--max-new-tokens",
        "-5",
        "--top-p",
        "3",
        "--temperature",
        "-1",
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --max-new-tokens -5: must be at least 1; --temperature -1.0: must be at least 0; "
        "--top-p 3.0: must be in (0, 1]"
    )
    args = ["eval", "--task", "toy:orbit", "--out", str(tmp_path), "--model", str(tmp_path)]
    proc = run(*args, "--n-samples", "0", "--batch-size", "0", "--max-blocks", "0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --n-samples 0: must be at least 1; --batch-size 0: must be at least 1; --max-blocks 0: must be at "
        "least 1"
    )
    proc = run("serve", "m", "--port", "0", "--max-block-tokens", "0", "--print-command", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --max-block-tokens 0: must be at least 1; --port 0: must be in 1..65535"
    build = run(
        "data",
        "build",
        str(tmp_path / "x.jsonl"),
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "-1",
        "--rounds",
        "-2",
        check=False,
    )
    assert build.returncode == 2
    assert build.stderr.strip() == "error: --workers -1: must be at least 1; --rounds -2: must be at least 0"


def test_generate_checks_the_tokenizer_before_loading_the_weights(tmp_path, smollm2_dir):
    for f in smollm2_dir.iterdir():  # no weights: loading them would fail, later and otherwise
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path)
    proc = run("generate", "hi", "--model", str(tmp_path), check=False)
    assert proc.returncode == 2 and "pass --add-tokens" in proc.stderr and "Traceback" not in proc.stderr


def test_help_shows_flags_as_flags_and_reads_at_80_columns():
    from memento.cli.evaluate import RUN

    text = run("eval", "--help", env={"COLUMNS": "80"}).stdout
    flat = " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 80
    assert " ".join(RUN.split()) in flat  # the --run syntax whole, wrapped
    assert "<bool>" not in text and "--answer-in-open-think " in text and "-q, --quiet " in text
    assert "saved after each [default: 16 reference, 256 vLLM]." in flat  # not eaten as markup
    assert "<bool>" not in run("generate", "--help").stdout and "--json " in run("generate", "--help").stdout
