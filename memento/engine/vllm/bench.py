"""`memento bench throughput`: vLLM + Memento against stock vLLM, same model, same KV pool, same outputs.

Design choices:
- The workload is N requests whose completions are real Memento traces, teacher-forced token by token
  (`extra_args["memento_force"]`), so every request has the block / memento / answer lengths of a real trace
  whatever the model. Request i sees the trace's blocks rotated by i, so the long blocks of different requests do
  not line up, and its problem starts with its number, so no two prompts share a KV page (a batch of different
  problems). `scale` shortens the problem, every block, memento and the answer by the same fraction (a CPU cannot
  decode N full-length traces in minutes); the ratio of block to memento length, which sets the savings, is kept.
- Stock vLLM gets the same number of output tokens per request (`min_tokens = max_tokens`, `ignore_eos`): its cost
  does not depend on which tokens they are. It runs with vLLM's defaults (prefix caching and async scheduling as
  vLLM decides); Memento runs with them off (`engine_args`), so the comparison charges Memento for that.
- Both engines get exactly the same KV pool (`num_gpu_blocks_override` pages). The default pool holds 4 of the
  longest requests without eviction, so with more requests than that the stock engine is KV-bound.
- KV usage over time comes from the schedulers themselves: both run a subclass that only appends, after each
  `schedule()`, the time, the pages in use and the running / waiting counts to a file (`additional_config
  ["memento_bench"]`). Nothing else in either engine changes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from vllm.v1.core.sched.scheduler import Scheduler

from memento.core.errors import MementoError
from memento.core.format import Block, Trace, render
from memento.core.plots import pyplot, save
from memento.core.policy import EvictionPolicy
from memento.engine.vllm.scheduler import MementoScheduler


class _Recorder:
    """Mixin for a vLLM scheduler: one JSON line per `schedule()` with the pages in use and the batch."""

    def __init__(self, vllm_config, *args, **kwargs):
        super().__init__(vllm_config, *args, **kwargs)
        path = (vllm_config.additional_config or {}).get("memento_bench", {}).get("record")
        self._record = open(path, "a", buffering=1) if path else None  # noqa: SIM115  (open for the engine's life)

    def schedule(self, *args, **kwargs):
        out = super().schedule(*args, **kwargs)
        if self._record is not None and (self.running or self.waiting):
            pool = self.kv_cache_manager.block_pool
            used = pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()  # page 0 is vLLM's reserved null page
            sample = [time.monotonic(), used, len(self.running), len(self.waiting)]
            self._record.write(json.dumps(sample) + "\n")
        return out


class StockRecorder(_Recorder, Scheduler):
    """vLLM's own scheduler, recording."""


class MementoRecorder(_Recorder, MementoScheduler):
    """The Memento scheduler, recording."""


STOCK_RECORDER = f"{__name__}.StockRecorder"
MEMENTO_RECORDER = f"{__name__}.MementoRecorder"


@dataclass
class Workload:
    prompts: list[list[int]]  # prompt token ids per request
    completions: list[list[int]]  # forced completion token ids per request
    source: str
    scale: float

    @property
    def longest(self) -> int:
        return max(len(p) + len(c) for p, c in zip(self.prompts, self.completions, strict=True))


def scaled(trace: Trace, scale: float) -> Trace:
    """The trace with its problem, every block, memento and the answer cut to `scale` of its characters."""

    def cut(text: str) -> str:
        keep = max(1, round(len(text) * scale))
        return text[:keep].rstrip() or text.split()[0]

    blocks = [Block(cut(b.text), cut(b.memento)) for b in trace.blocks]
    return replace(trace, problem=cut(trace.problem), blocks=blocks, answer=cut(trace.answer))


def workload(tokenizer, traces: list[Trace], requests: int, scale: float, source: str) -> Workload:
    from memento.core.chat import encode_chat

    if not traces or not all(t.blocks for t in traces):
        raise MementoError(f"{source}: the throughput workload needs traces with at least one block each")
    if not 0 < scale <= 1:
        raise MementoError(f"scale {scale}: choose a fraction in (0, 1]")
    prompts, completions = [], []
    for i in range(requests):
        trace = traces[i % len(traces)]
        k = (i // len(traces)) % len(trace.blocks)
        trace = scaled(replace(trace, blocks=trace.blocks[k:] + trace.blocks[:k]), scale)
        problem = f"(request {i + 1}) {trace.problem}"  # distinct prompts, as in a batch of different problems
        encoded = encode_chat(tokenizer, problem, render(replace(trace, problem=problem)))
        prompts.append(encoded.ids[: encoded.completion_start])
        completions.append(encoded.ids[encoded.completion_start :])
    return Workload(prompts, completions, source, scale)


@dataclass
class Run:
    engine: str
    seconds: float  # batch completion time
    output_tokens: int
    preemptions: int
    pages: int
    block_size: int
    samples: list[list[float]] = field(repr=False)  # [t (s from start), pages used, running, waiting]
    memento: dict | None = None  # summed per-request Memento statistics

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    def summary(self) -> dict:
        t = [s[0] for s in self.samples] + [self.seconds]
        dt = [b - a for a, b in itertools.pairwise(t)]  # each sample holds until the next one
        span = sum(dt) or 1.0
        mean_pages = sum(s[1] * d for s, d in zip(self.samples, dt, strict=True)) / span
        mean_running = sum(s[2] * d for s, d in zip(self.samples, dt, strict=True)) / span
        peak = max(s[1] for s in self.samples)
        return {
            "engine": self.engine,
            "seconds": round(self.seconds, 2),
            "output_tokens": self.output_tokens,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "peak_kv_pages": peak,
            "peak_kv_usage": round(peak / self.pages, 4),
            "mean_kv_usage": round(mean_pages / self.pages, 4),
            "max_running": max(s[2] for s in self.samples),
            "mean_running": round(mean_running, 2),
            "kv_tokens_per_running_request": round(mean_pages * self.block_size / max(mean_running, 1e-9), 1),
            "preemptions": self.preemptions,
            "steps": len(self.samples),
            **({"memento": self.memento} if self.memento else {}),
        }


def run_engine(
    model: str,
    work: Workload,
    *,
    memento: EvictionPolicy | None,
    pages: int,
    block_size: int,
    dtype: str,
    progress: bool = True,
) -> Run:
    """Serve the workload as one batch on a fresh engine; `memento=None` is stock vLLM."""
    from memento.engine.vllm import engine_args, environment, require_vllm

    vllm = require_vllm()
    environment(cpu_kv_gib=max(1, math.ceil(pages * block_size * 1e-5)))
    with tempfile.TemporaryDirectory(prefix="memento-bench-") as tmp:
        record = Path(tmp) / "samples.jsonl"
        common = {
            "dtype": dtype,
            "enforce_eager": True,
            "seed": 0,
            "block_size": block_size,
            "max_model_len": work.longest,
            "num_gpu_blocks_override": pages + 1,  # + vLLM's null page
            "disable_log_stats": False,
        }
        bench = {"memento_bench": {"record": str(record)}}
        if memento is None:
            args = {**common, "scheduler_cls": STOCK_RECORDER, "additional_config": bench}
        else:
            args = engine_args(memento, **common)
            args["scheduler_cls"] = MEMENTO_RECORDER
            args["additional_config"] = {**args["additional_config"], **bench}
        llm = vllm.LLM(model=str(model), **args)
        try:
            params = [_params(vllm, c, memento) for c in work.completions]
            warm_up = _params(vllm, work.completions[0][:8], memento)  # outside the timed batch
            llm.generate([{"prompt_token_ids": work.prompts[0]}], warm_up, use_tqdm=False)
            start = time.monotonic()
            outs = llm.generate([{"prompt_token_ids": p} for p in work.prompts], params, use_tqdm=progress)
            seconds = time.monotonic() - start
            metrics = {m.name: m for m in llm.get_metrics()}
        finally:
            llm.llm_engine.engine_core.shutdown()
        samples = [json.loads(line) for line in record.read_text().splitlines()]
    samples = [[round(s[0] - start, 3), *s[1:]] for s in samples if s[0] >= start]
    got = [list(o.outputs[0].token_ids) for o in outs]
    if [len(g) for g in got] != [len(c) for c in work.completions] or (memento and got != work.completions):
        raise MementoError("the engine did not produce the forced completions; the comparison would be unfair")
    stats = None
    if memento is not None:
        per = [o.kv_transfer_params["memento"] for o in outs]
        stats = {k: sum(p[k] for p in per) for k in ("evictions", "evicted_tokens", "preemptions")}
        stats["peak_kv_tokens_max"] = max(p["peak_kv_tokens"] for p in per)
    preempted = metrics.get("vllm:num_preemptions")
    return Run(
        "vLLM + Memento" if memento else "stock vLLM",
        seconds,
        sum(map(len, got)),
        int(preempted.value) if preempted else 0,
        pages,
        block_size,
        samples,
        stats,
    )


def _params(vllm, completion: list[int], memento: EvictionPolicy | None):
    n = len(completion)
    if memento is None:
        return vllm.SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0)
    extra = {"memento_force": completion, "memento_policy": asdict(memento)}
    return vllm.SamplingParams(max_tokens=n, ignore_eos=True, temperature=0, extra_args=extra)


def compare(
    model: str,
    work: Workload,
    *,
    policy: EvictionPolicy,
    pages: int | None = None,
    block_size: int = 32,
    dtype: str = "auto",
    progress: bool = True,
    phase=print,
) -> dict:
    """Both engines on the same workload and pool; the result holds both summaries, their ratios and the series.
    `dtype` auto: bf16 where this machine runs it natively, else float32 (`memento.core.precision`)."""
    from memento.core.precision import resolve

    if dtype == "auto":
        dtype = str(resolve("auto").dtype).removeprefix("torch.")  # bfloat16 | float32
    pages = pages or math.ceil(4 * work.longest / block_size)
    if pages * block_size < work.longest:
        raise MementoError(
            f"a pool of {pages} pages x {block_size} cannot hold the longest request "
            f"({work.longest} tokens): stock vLLM would refuse to start"
        )
    runs = []
    for name, memento in (("stock vLLM", None), ("vLLM + Memento", policy)):
        phase(f"{name}: {len(work.prompts)} requests, KV pool {pages} pages x {block_size} tokens")
        runs.append(
            run_engine(model, work, memento=memento, pages=pages, block_size=block_size, dtype=dtype, progress=progress)
        )
    stock, mem = (r.summary() for r in runs)
    ratios = {
        "throughput": round(mem["tokens_per_s"] / stock["tokens_per_s"], 3),
        "completion_time": round(stock["seconds"] / mem["seconds"], 3),
        "mean_running": round(mem["mean_running"] / max(stock["mean_running"], 1e-9), 3),
        "max_running": round(mem["max_running"] / max(stock["max_running"], 1), 3),
        "kv_per_running_request": round(
            stock["kv_tokens_per_running_request"] / max(mem["kv_tokens_per_running_request"], 1e-9), 3
        ),
    }
    lengths = [len(c) for c in work.completions]
    settings = {
        "model": str(model),
        "dtype": dtype,
        "requests": len(work.prompts),
        "traces": work.source,
        "scale": work.scale,
        "policy": asdict(policy),
        "kv_pool_pages": pages,
        "block_size": block_size,
        "kv_pool_tokens": pages * block_size,
        "longest_request_tokens": work.longest,
        "completion_tokens": {"min": min(lengths), "max": max(lengths), "total": sum(lengths)},
    }
    series = {r.engine: r.samples for r in runs}
    return {"settings": settings, "stock": stock, "memento": mem, "ratios": ratios, "series": series}


def plot(result: dict, path: Path) -> Path:
    """KV pages in use and running requests over time, both engines."""
    plt = pyplot()
    s = result["settings"]
    fig, (kv, run) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
    for (name, samples), color in zip(result["series"].items(), ("tab:gray", "tab:blue"), strict=True):
        t = [x[0] for x in samples]
        kv.step(t, [x[1] * s["block_size"] for x in samples], where="post", color=color, label=name)
        run.step(t, [x[2] for x in samples], where="post", color=color, label=name)
    kv.axhline(s["kv_pool_tokens"], color="black", linestyle=":", linewidth=1, label="KV pool")
    kv.set_ylabel("KV in use (tokens)")
    run.set_ylabel("running requests")
    run.set_xlabel("seconds")
    r = result["ratios"]
    kv.set_title(
        f"{s['requests']} requests, same KV pool ({s['kv_pool_tokens']} tokens): Memento "
        f"{r['throughput']:.2f}x output tokens/s"
    )
    kv.legend(loc="upper right")
    return save(fig, path, dpi=110)


def report(result: dict, command: str) -> list[str]:
    """The results as Markdown lines."""
    s, st, me, r = result["settings"], result["stock"], result["memento"], result["ratios"]
    rows = [
        ("output tokens/s", st["tokens_per_s"], me["tokens_per_s"], f"{r['throughput']:.2f}x"),
        ("batch completion (s)", st["seconds"], me["seconds"], f"{r['completion_time']:.2f}x faster"),
        ("peak KV usage", f"{st['peak_kv_usage']:.0%}", f"{me['peak_kv_usage']:.0%}", ""),
        ("mean KV usage", f"{st['mean_kv_usage']:.0%}", f"{me['mean_kv_usage']:.0%}", ""),
        (
            "KV tokens per running request",
            st["kv_tokens_per_running_request"],
            me["kv_tokens_per_running_request"],
            f"{r['kv_per_running_request']:.2f}x less",
        ),
        ("max running requests", st["max_running"], me["max_running"], f"{r['max_running']:.2f}x"),
        ("mean running requests", st["mean_running"], me["mean_running"], f"{r['mean_running']:.2f}x"),
        ("preemptions", st["preemptions"], me["preemptions"], ""),
    ]
    import platform

    import vllm

    stamp = f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, vLLM {vllm.__version__}, {os.cpu_count()} CPUs"
    lines = [
        f"Command: `{command}` ({stamp}).",
        "",
        f"Model `{Path(s['model']).name}` ({s['dtype']}); {s['requests']} concurrent requests teacher-forced "
        f"through {s['traces']} (blocks rotated per request, texts scaled to {s['scale']:g}); completions "
        f"{s['completion_tokens']['min']}-{s['completion_tokens']['max']} tokens, {s['completion_tokens']['total']} "
        f"in all; KV pool {s['kv_pool_pages']} pages x {s['block_size']} = {s['kv_pool_tokens']} tokens (the "
        f"longest request is {s['longest_request_tokens']}); Memento policy keep_last_n_blocks="
        f"{s['policy']['keep_last_n_blocks']}{', restart' if s['policy']['restart'] else ''}.",
        "",
        "| | stock vLLM | vLLM + Memento | ratio |",
        "|---|---:|---:|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "Paper (arXiv 2604.09852): 1.75x (4,290 vs 2,447 output tokens/s; Qwen3-8B, one B200, 240 concurrent "
        "requests).",
    ]
    if me.get("memento"):
        m = me["memento"]
        lines.insert(
            -1,
            f"Memento evicted {m['evicted_tokens']} tokens in {m['evictions']} evictions; the largest "
            f"request held at most {m['peak_kv_tokens_max']} tokens.\n",
        )
    return lines


class Section(NamedTuple):
    """One comparison in a saved report: its heading (None: a lone comparison), the name of its plot and JSON key."""

    heading: str | None
    name: str
    result: dict


def write_report(sections: list[Section], out_dir: Path, command: str, title: str, notes: str = "") -> list[str]:
    """Write `throughput.md`, `throughput.json`, `throughput-series.json` (the KV samples per step, compact) and a
    plot per comparison (`throughput.png` for a lone one, else `throughput-NAME.png`) into `out_dir`; return the
    report's lines. Several comparisons are keyed by name in the JSON files; a lone one is the files' whole content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, summaries, series = [f"# {title}", ""], {}, {}
    for s in sections:
        png = plot(s.result, out_dir / (f"throughput-{s.name}.png" if s.heading else "throughput.png")).name
        summaries[s.name] = {k: v for k, v in s.result.items() if k != "series"}
        series[s.name] = s.result["series"]
        lines += [
            *([f"## {s.heading}", ""] if s.heading else []),
            *report(s.result, command),
            "",
            f"![KV usage over time]({png})",
            "",
        ]
    lone = len(sections) == 1 and sections[0].heading is None
    summary, samples = (summaries[sections[0].name], series[sections[0].name]) if lone else (summaries, series)
    (out_dir / "throughput.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / "throughput-series.json").write_text(json.dumps(samples, separators=(",", ":")) + "\n")
    if notes:
        lines.append(notes)
    (out_dir / "throughput.md").write_text("\n".join(lines))
    return lines
