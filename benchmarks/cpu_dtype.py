"""fp32 vs bf16 on this CPU: one training step and teacher-forced generation, for the toy model and SmolLM2-135M.

Run: .venv/bin/python benchmarks/cpu_dtype.py [--quick]   (writes benchmarks/results/cpu_dtype.md and .json)

Why: bf16 is ~2x faster than fp32 on CPUs with native bf16 (AVX512-BF16, AMX) and several times slower on AVX2-only
CPUs, where bf16 GEMMs take a scalar fallback. `precision: auto` (memento/precision.py) decides from the CPU's
capability; this script measures what that decision is worth on the machine at hand, and keeps every machine's
numbers in the results file keyed by its CPU capability so the next machine can be compared.

Each measurement runs in a fresh process per ISA path: `native` (the machine as it is) and, on an AVX512 machine,
`avx2` (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, which is as close to an AVX2-only CPU as one gets here).
- train: the real trainer's loss (`memento.train.losses.token_losses`, block-masked, `memento_sdpa`) on orbit
  traces, backward and AdamW, under torch.autocast(bf16) with fp32 weights vs plain fp32; median of timed steps.
- generate: the reference engine teacher-forcing the same traces (4 requests at a time, eviction on), with the
  weights in bf16 vs fp32; tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from results_file import OUT, header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

PATHS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
# (model, batch of training traces, traces generated, train steps timed)
MODELS = {"toy": (16, 8, 3), "smollm2-135m": (4, 4, 2)}
QUICK = {"toy": (4, 4, 2), "smollm2-135m": (2, 2, 1)}


def setup(name: str, batch: int):
    """(model, tokenizer, examples) through the trainer's own loading code."""
    from memento.toy.experiments import MODEL_CONFIG
    from memento.train.config import from_dict
    from memento.train.dataset import load_examples
    from memento.train.model import load_model

    model = ("scratch", "chars") if name == "toy" else ("smollm2", None)
    config = from_dict(
        {
            "model": model[0],
            "tokenizer": model[1],
            "model_config": MODEL_CONFIG if name == "toy" else None,
            "out": "unused",
            "data": {"train": [f"toy:orbit?n={batch}&seed=0"]},
            "stages": [{"name": "s"}],
            "policy": {"keep_last_n_blocks": 0, "mask_delimiters": True},
        }
    )
    net, tokenizer = load_model(config)
    examples, _ = load_examples(config.data.train, tokenizer, 1024, "truncate")
    return net, tokenizer, examples, config.memento_policy()


def measure(name: str, precision: str, sizes: tuple[int, int, int]) -> dict:
    """One (model, precision) on this process's ISA path: median train-step seconds and generation tokens/s."""
    import torch

    from memento.core.precision import resolve
    from memento.engine.generate import ReferenceEngine
    from memento.engine.sampling import Sampling
    from memento.train.dataset import Collator
    from memento.train.losses import token_losses

    torch.set_num_threads(os.cpu_count() or 1)
    batch, n_generate, steps = sizes
    net, tokenizer, examples, policy = setup(name, batch)
    collated = Collator(tokenizer.pad_token_id, policy)(examples)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    times = []
    net.train()
    for _ in range(steps + 1):  # the first step warms up, unless it is so slow (bf16 off its native path) that
        if len(times) == 1 and times[0] > 30:  # warming up is noise next to it: then it is the measurement
            break
        start = time.perf_counter()
        with autocast:
            losses, _ = token_losses(net, collated, "memento", False, "cpu")
            loss = losses.sum() / max(losses.numel(), 1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    train_tokens = int(collated["attention_mask"].sum()) if "attention_mask" in collated else None
    net.eval().to(torch.bfloat16 if precision == "bf16" else torch.float32)
    engine = ReferenceEngine(net, tokenizer, policy)
    forced = [e.ids[e.completion_start :] for e in examples[:n_generate]]
    prompts = [tokenizer.decode(e.ids[: e.completion_start]) for e in examples[:n_generate]]
    engine.generate(prompts[:1], force=[forced[0][:16]], batch_size=4)  # warm-up
    start = time.perf_counter()
    out = engine.generate(prompts, Sampling(max_new_tokens=4096), force=forced, batch_size=4)
    seconds = time.perf_counter() - start
    generated = sum(g.stats.generated_tokens for g in out)
    return {
        "model": name,
        "precision": precision,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "auto_chooses": resolve("auto").precision,
        "auto_reason": resolve("auto").reason,
        "train_batch": batch,
        "train_tokens": train_tokens,
        "train_step_s": statistics.median(times[1:] or times),
        "generate_requests": n_generate,
        "generate_tokens": generated,
        "generate_tokens_per_s": generated / seconds,
    }


def spawn(path: str, name: str, precision: str, quick: bool) -> dict:
    env = {**os.environ, **PATHS[path]}
    args = [sys.executable, __file__, "--one", name, precision] + (["--quick"] if quick else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=Path(__file__).parent)
    if done.returncode:
        raise SystemExit(f"{path} {name} {precision} failed:\n{done.stderr[-3000:]}")
    return {"path": path, **json.loads(done.stdout.strip().splitlines()[-1])}


def report(machines: dict) -> list[str]:
    lines = header(
        "fp32 vs bf16 on CPU: training step and generation",
        "cpu_dtype.py",
        "",
        "`precision: auto` picks bf16 only on CPUs with native bf16 (memento/precision.py). The `avx2` path forces",
        "ATen and oneDNN onto AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) on an AVX512 machine.",
    )
    for key, machine in machines.items():
        lines += [
            "",
            f"## {key}",
            "",
            f"CPU: {machine['cpu']}; {machine['cores']} cores; {machine['date']}.",
            "",
            "| path | capability | auto picks | model | train step fp32 | bf16 | bf16 speed vs fp32 "
            "| generate fp32 tok/s | bf16 tok/s | bf16 speed vs fp32 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in machine["rows"]:
            lines.append(
                f"| {row['path']} | {row['capability']} | {row['auto']} | {row['model']} | {row['fp32_step_s']:.2f} s "
                f"| {row['bf16_step_s']:.2f} s | {row['fp32_step_s'] / row['bf16_step_s']:.2f}x "
                f"| {row['fp32_tok_s']:.0f} | {row['bf16_tok_s']:.0f} | {row['bf16_tok_s'] / row['fp32_tok_s']:.2f}x |"
            )
    lines += [
        "",
        "Speed vs fp32 above 1: bf16 is faster. Train step: a batch of toy orbit traces (toy: 16, SmolLM2: 4;",
        "--quick: 4, 2), block-masked loss, backward, AdamW; median over timed steps after one warm-up (a step",
        "over 30 s is timed once). Generate: up to 4 requests teacher-forced at once, eviction on.",
    ]
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else MODELS
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], sizes[args.one[0]])))
        return
    import torch

    native = torch.backends.cpu.get_cpu_capability()
    paths = ["native"] + (["avx2"] if native.upper().startswith("AVX512") else [])
    rows = []
    for path in paths:
        for name in sizes:
            fp32, bf16 = (spawn(path, name, p, args.quick) for p in ("fp32", "bf16"))
            rows.append(
                {
                    "path": path,
                    "capability": fp32["capability"],
                    "auto": fp32["auto_chooses"],
                    "auto_reason": fp32["auto_reason"],
                    "model": name,
                    "fp32_step_s": fp32["train_step_s"],
                    "bf16_step_s": bf16["train_step_s"],
                    "fp32_tok_s": fp32["generate_tokens_per_s"],
                    "bf16_tok_s": bf16["generate_tokens_per_s"],
                }
            )
            print(
                f"{path} {name}: train fp32 {fp32['train_step_s']:.2f} s, bf16 {bf16['train_step_s']:.2f} s; "
                f"generate fp32 {fp32['generate_tokens_per_s']:.0f} tok/s, bf16 {bf16['generate_tokens_per_s']:.0f}",
                flush=True,
            )
    saved = OUT / "cpu_dtype.json"
    machines = json.loads(saved.read_text()).get("machines", {}) if saved.exists() else {}
    key = f"{native} ({cpu_name()})" + (" quick" if args.quick else "")
    machines[key] = {"cpu": cpu_name(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write("cpu_dtype", {"machines": machines}, report(machines))


if __name__ == "__main__":
    main()
