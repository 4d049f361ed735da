"""`memento demo`: the paper's findings on a toy world, end to end on a CPU, in minutes.

Default run (what `make demo` does): every stage runs live at reduced size (data -> the five model variants through
the real trainer -> generation with the reference engine -> the probe), then the small checkpoints shipped in
`memento/toy/checkpoints/` (trained by `memento demo --full`, see docs/results/toy.md) are scored live on new
problems and probed, and the report is written from them. `--full` trains every variant at full size first and
reports on those (tens of minutes); `--ship` then copies them into the package as the new shipped checkpoints.

The live training is sized by this machine's measured speed, not by a fixed step count: one timed optimizer step
of the live batch sets T so that the 7T steps of the five variants fit `LIVE_TRAIN_SECONDS` (at most the live
size's T, at least 2). CPUs differ several-fold (see benchmarks/cpu_dtype.py); the demo's time should not.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import torch

from memento.core.precision import resolve
from memento.synthetic.tasks import SCORING_PROBLEMS
from memento.toy import report
from memento.toy.experiments import BY_NAME, EVICT, FULL, VARIANTS, Size, accuracy, load, probe, recipe, train_variants

log = logging.getLogger(__name__)

TASK = "orbit"
SHIPPED = Path(__file__).parent / "checkpoints"
SIZES = {  # live: every stage at reduced size; shipped: scoring the shipped checkpoints; full: `--full`; tiny: smoke
    "live": Size(train=128, steps=6, batch=16, micro_batch=16, problems=16, probe_traces=300, max_new_tokens=500),
    "shipped": Size(train=0, steps=0, batch=0, micro_batch=0, problems=64, probe_traces=1000),
    "full": Size(train=12000, steps=600, batch=16, micro_batch=16, problems=SCORING_PROBLEMS, probe_traces=3000),
    "tiny": Size(train=32, steps=2, batch=8, micro_batch=8, problems=4, probe_traces=60, max_new_tokens=60),
}


LIVE_TRAIN_SECONDS = 120  # the budget of the live training (7T optimizer steps in all)
STEPS_PER_T = sum(units for v in VARIANTS if v.name != "stage1" for _, units in v.stages)  # stage1: the curriculum's


class Demo(NamedTuple):
    out: Path
    report: Path
    results: dict
    seconds: float


def shipped_models() -> dict[str, Path] | None:
    folders = {v.name: SHIPPED / v.name for v in VARIANTS}
    return folders if all((f / "config.json").exists() for f in folders.values()) else None


class Phases:
    """Tells `phase(text)` what starts next, and keeps how many seconds each phase took."""

    def __init__(self, tell: Callable[[str], None]):
        self.tell, self.seconds, self.current, self.start = tell, {}, None, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.finish()
        self.current, self.start = text, time.perf_counter()
        self.tell(text)

    def finish(self) -> dict[str, float]:
        if self.current is not None:
            self.seconds[self.current] = round(time.perf_counter() - self.start, 1)
            self.current = None
        return self.seconds


def step_seconds(size: Size, seed: int = 0) -> float:
    """Seconds of one optimizer step of the live training on this machine (the second of two; the first warms up)."""
    from memento.train.config import from_dict
    from memento.train.trainer import train

    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        values = recipe(BY_NAME["stage2-only"], TASK, replace(size, train=size.batch), Path(folder), seed)
        values["stages"][0]["max_steps"] = 2
        values["data"]["eval_fraction"] = 0.0
        train(from_dict(values), progress=False, on_step=lambda *_: stamps.append(time.perf_counter()))
    return stamps[1] - stamps[0]


def live_size(seconds_per_step: float, budget: float = LIVE_TRAIN_SECONDS) -> Size:
    """The live size with T cut so that its STEPS_PER_T x T steps take at most `budget` seconds (T >= 2)."""
    live = SIZES["live"]
    steps = max(2, min(live.steps, int(budget / (STEPS_PER_T * max(seconds_per_step, 1e-6)))))
    return replace(live, steps=steps)


def run(
    out: Path, full: bool = False, seed: int = 0, ship: bool = False, phase: Callable[[str], None] = lambda _: None
) -> Demo:
    """Run the demo into `out` (see the module docstring); `phase(text)` is told what starts next. `ship` (with
    `full`): the trained models become the shipped checkpoints. results.json records each phase's seconds."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"task": TASK, "seed": seed, "mode": "full" if full else "default"}
    phase = Phases(phase)

    scores = leak = None
    if full:
        size = SIZES["full"]
        phase(f"training the five variants at full size (T = {size.steps} steps)")
        folders = train_variants(TASK, size, out / "models", seed)
        results["source"] = f"trained by this run (`memento demo --full`, T = {size.steps} steps)"
        if ship:
            folders = copy_to_package(folders)
            results["source"] += ", shipped in memento/toy/checkpoints"
    else:
        precision = resolve("auto")
        phase(f"live: timing one training step on this machine (precision {precision.precision}, {precision.reason})")
        seconds = step_seconds(SIZES["live"], seed)
        size = live_size(seconds)
        results["live_step"] = {"seconds": seconds, "precision": precision.precision, "reason": precision.reason}
        phase(f"live: training the five variants at reduced size (T = {size.steps} steps, {seconds:.2f} s a step)")
        live_folders = train_variants(TASK, size, out / "live", seed)
        phase("live: scoring them with the reference engine")
        live = accuracy(live_folders, TASK, size, out / "live" / "eval")
        results["live"], results["live_size"] = report.headline(live), asdict(size)
        phase("live: leakage probe")
        live_probe = probe(live_folders["curriculum"], TASK, size)
        results["live_probe"] = {mode: leak.table() for mode, leak in live_probe.items()}
        folders = shipped_models()
        if folders is None:
            log.warning("no shipped checkpoints: reporting on the live models")
            folders, scores, leak = live_folders, live, live_probe
            results["source"] = "the live models (no shipped checkpoints found)"
        else:
            size = SIZES["shipped"]
            results["source"] = "checkpoints shipped in memento/toy/checkpoints (trained by `memento demo --full`)"
    if scores is None:
        phase(f"scoring {len(folders)} models on {size.problems} new problems (full attention, eviction, restart)")
        scores = accuracy(folders, TASK, size, out / "eval")
        phase(f"leakage probe on the curriculum model ({size.probe_traces} traces)")
        leak = probe(folders["curriculum"], TASK, size)
    phase("writing the report")
    results.update(
        size=asdict(size),
        headline=report.headline(scores),
        comparisons=report.comparisons(scores),
        probe={mode: leak_.table() for mode, leak_ in leak.items()},
        probe_n_test=leak["evict"].n_test,
    )
    timelines = example_timelines(folders)
    plots = {
        "accuracy": report.plot_accuracy(results["headline"], out / "accuracy.png"),
        "kv": report.plot_sawtooth(timelines, out / "kv_sawtooth.png"),
        "curves": report.plot_curves(
            {n: training_log(f) for n, f in folders.items() if n != "stage1"}, out / "curves.png"
        ),
    }
    plots["probe_layers"], plots["probe_distance"] = report.plot_probe(
        leak, out / "probe_layers.png", out / "probe_distance.png"
    )
    seconds = time.perf_counter() - started
    results["seconds"], results["phases"] = seconds, phase.finish()
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    path = report.write(out, results, leak, plots)
    return Demo(out, path, results, seconds)


def example_timelines(folders: dict[str, Path]) -> dict[str, list[int]]:
    """KV timelines of one new problem: the Control (full attention) and the curriculum model (eviction)."""
    from memento.engine.generate import ReferenceEngine
    from memento.engine.sampling import Sampling
    from memento.synthetic.tasks import held_out

    problem = held_out(TASK, 1, seed=30_000)[0].problem
    out = {}
    for name, policy, label in (
        ("control", FULL, "Control, full attention"),
        ("curriculum", EVICT, "Memento, eviction"),
    ):
        model, tokenizer = load(folders[name])
        generation = ReferenceEngine(model, tokenizer, policy).generate(problem, Sampling(max_new_tokens=1024))[0]
        out[label] = generation.stats.kv_timeline
    return out


def training_log(folder: Path) -> Path:
    """The log.jsonl of the run that trained `folder` (shipped checkpoints carry it inside)."""
    inside = folder / "log.jsonl"
    return inside if inside.exists() else folder.parent / "log.jsonl"


def copy_to_package(folders: dict[str, Path]) -> dict[str, Path]:
    """Make trained model folders the shipped checkpoints: bf16 weights, tokenizer, recipe and training log."""
    shipped = {}
    for name, folder in folders.items():
        lines = training_log(folder).read_text().splitlines()
        if name == "stage1":  # the curriculum's first stage: its log is the curriculum's, cut to stage 1
            lines = [line for line in lines if json.loads(line).get("stage") == "stage1"]
        shipped[name] = ship(folder, SHIPPED / name, lines)
    return shipped


def ship(folder: Path, target: Path, log_lines: list[str]) -> Path:
    """`folder`'s model as a shipped checkpoint in `target`: bf16 weights, tokenizer, recipe and training log."""
    from transformers import AutoModelForCausalLM

    shutil.rmtree(target, ignore_errors=True)
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(target)
    for extra in (
        *folder.glob("tokenizer*"),
        *folder.glob("special_tokens*"),
        *folder.glob("chat_template*"),
        folder / "recipe.yaml",
    ):
        shutil.copy(extra, target / extra.name)
    (target / "log.jsonl").write_text("".join(line + "\n" for line in log_lines))
    return target
