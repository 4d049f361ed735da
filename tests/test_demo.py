"""The demo at a reduced size: every experiment runs through the real trainer, engine and probe, deterministically,
and the report, results and plots come out; the shipped checkpoints are real, loadable models."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from memento.toy import demo
from memento.toy.experiments import BY_NAME, Size, accuracy, probe, train_variants

pytestmark = pytest.mark.slow  # trains every toy variant

TINY = Size(train=32, steps=2, batch=8, micro_batch=8, problems=4, probe_traces=60, max_new_tokens=60)


@pytest.fixture(scope="module")
def ran(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(demo, "SIZES", {"live": TINY, "shipped": TINY, "full": TINY})
    out = tmp_path_factory.mktemp("demo")
    return demo.run(out, seed=0)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_demo_writes_report_results_and_plots(ran):
    for name in (
        "report.md",
        "results.json",
        "accuracy.png",
        "kv_sawtooth.png",
        "curves.png",
        "probe_layers.png",
        "probe_distance.png",
    ):
        assert (ran.out / name).stat().st_size > 0, name
    results = json.loads((ran.out / "results.json").read_text())
    assert [r["model"] for r in results["headline"]] == list(BY_NAME)
    assert [r["model"] for r in results["live"]] == list(BY_NAME)
    control = next(r for r in results["headline"] if r["model"] == "control")
    assert control["accuracy_evict"] is None and control["peak_vs_control"] == 1.0
    compared = {"memento vs control", "equal total compute", "equal stage-2 compute", "restart"}
    assert compared <= set(results["comparisons"])
    assert results["comparisons"]["restart"]["modes"] == ["strict", "release"]
    roles = {row["role"] for row in results["probe"]["evict"]}
    assert {"causal control", "direct", "masked +1", "masked +7"} <= roles
    report = (ran.out / "report.md").read_text()
    for heading in ("## Headline", "## Curriculum", "## Restart mode", "## The ghost trace", "## Live run"):
        assert heading in report
    assert results["live_step"]["seconds"] > 0 and results["live_step"]["precision"] in ("bf16", "fp32")
    assert "T was sized to this machine" in report and "| live: leakage probe |" in report
    assert "Both restart modes give this number" in report
    assert "live: leakage probe" in results["phases"] and "writing the report" in results["phases"]
    assert sum(results["phases"].values()) == pytest.approx(results["seconds"], abs=1.0)


def test_live_training_is_sized_by_the_measured_step(monkeypatch):
    monkeypatch.setitem(demo.SIZES, "live", replace(TINY, steps=6))
    assert demo.STEPS_PER_T == 7, "control 2T + curriculum 2T + stage2-total 2T + stage2-only T"
    assert demo.live_size(0.001).steps == 6, "a fast machine trains the whole live size"
    assert demo.live_size(1.0, budget=7 * 3.5).steps == 3, "T fits the budget"
    assert demo.live_size(1000.0).steps == 2, "never under 2"


def test_each_experiment_alone_and_deterministic(tmp_path):
    a = train_variants("orbit", TINY, tmp_path / "a", seed=3, names=["stage2-only"])
    b = train_variants("orbit", TINY, tmp_path / "b", seed=3, names=["stage2-only"])
    logs = [
        [json.loads(x)["loss"] for x in (f.parent / "log.jsonl").read_text().splitlines() if '"loss"' in x]
        for f in (a["stage2-only"], b["stage2-only"])
    ]
    assert logs[0] == logs[1] and len(logs[0]) >= 1, "same seed, same training"
    scores = accuracy(a, "orbit", TINY, tmp_path / "eval", restart_for=("stage2-only",))
    assert scores[0].evict.n == 4 and scores[0].restart is not None
    leak = probe(a["stage2-only"], "orbit", TINY)
    assert leak["evict"].accuracy.shape == (4, 10)
    assert leak["evict"].n_test == 18


def test_full_mode_trains_and_ships(tmp_path, monkeypatch):
    """`memento demo --full --ship` at a tiny size: trains every variant, reports on them, ships bf16 copies."""
    monkeypatch.setattr(demo, "SIZES", {"live": TINY, "shipped": TINY, "full": TINY})
    monkeypatch.setattr(demo, "SHIPPED", tmp_path / "shipped")
    result = demo.run(tmp_path / "out", full=True, ship=True)
    assert "live" not in result.results and "shipped in memento/toy/checkpoints" in result.results["source"]
    folders = demo.shipped_models()
    assert folders is not None and set(folders) == set(BY_NAME)
    from memento.toy.experiments import load

    model, _ = load(folders["curriculum"])
    assert model.config.num_hidden_layers == 4
    assert (folders["curriculum"] / "model.safetensors").stat().st_size < 2_000_000, "bf16 weights"
    assert json.loads((folders["curriculum"] / "config.json").read_text())["dtype"] == "bfloat16"
    steps = [json.loads(x)["stage"] for x in (folders["curriculum"] / "log.jsonl").read_text().splitlines()]
    assert {"stage1", "stage2"} <= set(steps), "the curriculum's log holds both stages"


def test_shipped_checkpoints_are_trained_models_that_know_the_format(tmp_path):
    """The five models in memento/toy/checkpoints (from `memento demo --full --ship`): loadable, tiny, with their
    recipe and training log, and the Memento models solve new problems with their blocks evicted (chance: 10%)."""
    from memento.core.chat import memento_ids
    from memento.core.policy import EvictionPolicy
    from memento.toy.evaluate import evaluate
    from memento.toy.experiments import load

    folders = demo.shipped_models()
    assert folders is not None and set(folders) == set(BY_NAME), "memento/toy/checkpoints holds the five models"
    for name, folder in folders.items():
        model, tokenizer = load(folder)
        memento_ids(tokenizer)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000, name
        assert (folder / "recipe.yaml").exists() and (folder / "log.jsonl").stat().st_size > 0, name
    for name, at_least in (("curriculum", 0.25), ("stage2-total", 0.5)):  # 42% and 82% on 256 (docs/results/toy.md)
        scores = evaluate(folders[name], "orbit", EvictionPolicy(0, mask_delimiters=True), tmp_path / name, 8)
        assert scores.accuracy >= at_least and scores.peak_kv_tokens < 300, (name, scores.accuracy)
