"""Data pipeline throughput vs --workers against an OpenAI-compatible server with a fixed latency per request,
and the pipeline's own overhead per trace with an instant server.

Run: .venv/bin/python benchmarks/data_pipeline.py   (writes benchmarks/results/data_pipeline.md and .json)

The server is `memento.data.fakellm.FakeLLM` on loopback: real HTTP, rule-based replies. With latency L and W
workers, LLM calls can go at most W / L per second; the table shows how close the pipeline gets.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.data.fakellm import FakeLLM
from memento.data.pipeline import Config, build

TRACES = 64


def run(latency: float, workers: int) -> dict:
    with FakeLLM(latency=latency) as llm:
        tmp = Path(tempfile.mkdtemp())
        config = Config(backend="openai", base_url=llm.url, model="fake", workers=workers, limit=TRACES)
        t0 = time.perf_counter()
        stats = build("champ", tmp, config)
        seconds = time.perf_counter() - t0
        shutil.rmtree(tmp)
        calls = llm.requests["total"]
    return {
        "latency_s": latency,
        "workers": workers,
        "traces": stats["succeeded"],
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": calls / seconds,
        "ideal_calls_per_s": workers / latency if latency else None,
    }


def main() -> None:
    build("champ", Path(tempfile.mkdtemp()), Config(limit=1))  # warm caches (tokenizer, numba, champ data)
    rows = [run(0.0, 1)] + [run(0.25, w) for w in (1, 2, 4, 8, 16)]
    for r in rows:
        print(r)
    lines = header(
        "Data pipeline throughput vs workers (OpenAI-compatible backend, loopback server)",
        "data_pipeline.py",
        f"{TRACES} CHAMP solutions, default settings (judge rounds 2). Each run includes tokenizer load (~1 s).",
    )
    lines += [
        "| server latency (s) | workers | LLM calls | seconds | calls/s | ideal workers/latency | per trace (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ideal = f"{r['ideal_calls_per_s']:.1f}" if r["ideal_calls_per_s"] else "-"
        lines.append(
            f"| {r['latency_s']} | {r['workers']} | {r['calls']} | {r['seconds']:.1f} | "
            f"{r['calls_per_s']:.1f} | {ideal} | {r['seconds'] / max(r['traces'], 1):.3f} |"
        )
    write("data_pipeline", {"runs": rows}, lines)


if __name__ == "__main__":
    main()
