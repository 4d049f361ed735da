"""`memento eval` on the demo's toy models: the demo's own scores reproduced, runs compared, the report written."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.eval.report import RunSpec, describe, parse_run, run_all, slug
from memento.toy.demo import SHIPPED
from memento.toy.experiments import EVICT, FULL, RESTART, difference

pytestmark = [pytest.mark.xdist_group("eval-toy"), pytest.mark.slow]  # one worker computes the fixtures once

N = 12  # problems; the demo's scoring set starts with these (`make demo` scores 64, `--full` 256)
COMMON = {"max_new_tokens": 1024}  # greedy, as the demo


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    runs = [
        RunSpec("control", str(SHIPPED / "control"), asdict(FULL)),
        RunSpec("memento", str(SHIPPED / "curriculum"), asdict(EVICT)),
        RunSpec("restart", str(SHIPPED / "curriculum"), asdict(RESTART)),
    ]
    return out, run_all(runs, ["toy:orbit"], out, COMMON, limit=N, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def demo_scores(tmp_path_factory):
    """What the demo computes for the same models (`memento.toy.experiments.accuracy`, its scorer: all problems in
    one engine call, refilling 32 slots)."""
    from memento.toy.evaluate import evaluate

    out = tmp_path_factory.mktemp("demo")
    scores = {}
    for name, folder, policy in (
        ("control", "control", FULL),
        ("memento", "curriculum", EVICT),
        ("restart", "curriculum", RESTART),
    ):
        scores[name] = evaluate(SHIPPED / folder, "orbit", policy, out / name, N, 32, 1024, plain=folder == "control")
    return scores


def test_the_demo_models_score_through_memento_eval_as_in_the_demo(compared, demo_scores):
    out, result = compared
    for s in result["summaries"]:
        demo = demo_scores[s["run"]]
        records = [
            json.loads(line) for line in (out / s["run"] / "toy-orbit" / "results.jsonl").read_text().splitlines()
        ]
        assert [r["outcome"] == "correct" for r in records] == demo.correct  # problem by problem
        assert s["pass@1"] == demo.accuracy and s["pass@1_ci95"] == pytest.approx(demo.ci)
        assert s["peak_kv_tokens"] == pytest.approx(demo.peak_kv_tokens)
        assert s["auc_kv_ktok"] == pytest.approx(demo.auc_ktok)
    by = {d["run"]: d for d in result["differences"]}
    restart = difference(demo_scores["restart"], demo_scores["control"])
    assert by["restart"]["pass@1_delta"] == restart.delta and by["restart"]["pass@1_delta_ci95"] == list(restart.ci)
    assert by["memento"]["peak_kv_ratio"] > 3  # 708 vs 196 tokens in the demo


def test_report_has_the_table_the_differences_and_the_plots(compared):
    out, result = compared
    report = (out / "report.md").read_text()
    assert "| run | model | policy | toy:orbit | peak KV (tokens) | KV AUC (k tokens) |" in report
    for name, policy in (
        ("control", "full"),
        ("memento", "keep0 + mask delimiters"),
        ("restart", "keep0 + mask delimiters + restart"),
    ):
        assert f"| {name} | " in report and policy in report
    assert "## Differences from control" in report
    assert report.count("| toy:orbit | ") == 1 + 3 + 2  # a column header, the rows per task, the differences
    saved = json.loads((out / "summary.json").read_text())
    assert saved["differences"] == result["differences"] and len(saved["summaries"]) == 3
    for plot in ("accuracy_vs_kv.png", "distributions.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    memento = [json.loads(line) for line in (out / "memento" / "toy-orbit" / "results.jsonl").read_text().splitlines()]
    assert all(len(r["memento_tokens"]) == r["blocks"] and min(r["memento_tokens"]) > 0 for r in memento)


def test_run_specs():
    default = EvictionPolicy(0, mask_delimiters=True)
    spec = parse_run("r=models/m?max_block_tokens=64&restart=true&policy=keep0", default)
    assert spec.name == "r" and spec.model == str(Path("models/m").resolve())
    assert describe(spec.policy) == "keep0 + mask delimiters + restart + max block tokens 64"
    limited = EvictionPolicy(0, mask_delimiters=True, max_blocks=3)
    assert describe(parse_run("base=m?policy=full", limited).policy) == "full"  # eviction defaults do not apply
    assert parse_run("k=m?policy=keep2&mask_delimiters=no", default).policy["keep_last_n_blocks"] == 2
    release = parse_run("r=m?restart=true&restart_mode=release", default).policy
    assert release["restart_mode"] == "release" and describe(release) == "keep0 + mask delimiters + restart (release)"
    with pytest.raises(MementoError, match="restart_mode must be one of strict, release"):
        parse_run("r=m?restart=true&restart_mode=sideways", default)
    for bad, message in (
        ("m", "NAME=MODEL"),
        ("a b=m", "NAME=MODEL"),
        ("r=m?restart=maybe", "yes/no"),
        ("r=m?max_blocks=x", "positive integer"),
        ("r=m?colour=red", "unknown option 'colour'"),
        ("r=m?policy=half", "unknown policy"),
    ):
        with pytest.raises(MementoError, match=message):
            parse_run(bad, default)
    with pytest.raises(MementoError, match="restart needs eviction"):  # given beside `full`, not dropped
        parse_run("r=m?policy=full&restart=true", default)
    assert slug("gym:basic_arithmetic") == "gym-basic_arithmetic" and slug("math500:/data/m5.jsonl") == "math500-m5"
    assert slug("lcb:2024-08-01..2025-02-01") != slug("lcb:2024-08-01..2025-05-01")
    assert slug("lcb:/d/x.jsonl@2025-02-01..") == "lcb-x-2025-02-01" and slug("lcb:..") == "lcb-all"


def test_the_command_line(tmp_path):
    memento = str(Path(sys.executable).parent / "memento")
    model = str(SHIPPED / "curriculum")
    args = [
        memento,
        "eval",
        "--task",
        "toy:orbit",
        "--out",
        str(tmp_path),
        "--limit",
        "2",
        "-q",
        "--protocol",
        "paper",
        "--mask-delimiters",
    ]
    proc = subprocess.run([*args, "--model", model], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "report:" in proc.stdout and "departs from the paper protocol: model context 1024" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "curriculum" / "toy-orbit" / "results.jsonl").open()]
    assert len(records) == 2 * 2  # the paper's 2 samples per problem outside competition math
    report = (tmp_path / "report.md").read_text()
    assert "Protocol **paper**: the paper's (App. A.2.2): temperature 0.6, top-p 0.95, top-k 20" in report
    assert "- curriculum, toy:orbit: model context 1024 tokens (protocol: 32768" in report
    assert json.loads((tmp_path / "curriculum" / "toy-orbit" / "run.json").read_text())["protocol"] == "paper"
    both = subprocess.run([*args, "--model", model, "--run", f"a={model}"], capture_output=True, text=True)
    assert both.returncode == 2 and "either --model" in both.stderr and "Traceback" not in both.stderr
