"""Data pipeline throughput vs --workers against an OpenAI-compatible server with a fixed latency per request,
and the pipeline's own overhead per trace with an instant server.

Run: .venv/bin/python benchmarks/data_pipeline.py   (writes benchmarks/results/data_pipeline.md and .json)

The server is `memento.data.fakellm` on loopback, in its own process: real HTTP, rule-based replies. With latency L
and W workers, one call in flight per worker gives W / L calls per second; the independent calls of one trace (score
windows, judge and revision of each block) go out together, so a trace can have several in flight. Calls/s count from
the first request to the last reply (the tokenizer and data loading before them are in "seconds").

The input is the first 128 *distinct* CHAMP solutions: CHAMP repeats some solution texts word for word (93 distinct
among its first 128), and the pipeline's response cache answers a repeated request once, so a trace repeating
another one waits on the other's call instead of making its own: with repeats, the server sees fewer calls than the
pipeline gets answers, and calls/s would understate how busy the workers keep it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.data.pipeline import Config, build
from memento.data.sources import iter_raw

TRACES = 128


def _distinct_champ(path: Path, n: int) -> None:
    """The first `n` CHAMP solutions with distinct reasoning, as a JSONL file of raw traces."""
    seen, rows = set(), []
    for raw in iter_raw("champ"):
        if raw.reasoning not in seen:
            seen.add(raw.reasoning)
            rows.append({"id": raw.id, "problem": raw.problem, "cot": f"<think>{raw.reasoning}</think>{raw.answer}"})
        if len(rows) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(source: Path, latency: float, workers: int) -> dict:
    """One build against a fake server in its own process (as a real endpoint would be: it must not take the
    pipeline's CPU); calls/s counts from the first request's arrival to the last reply."""
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-m", "memento.data.fakellm", "--latency", str(latency)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = server.stdout.readline().strip()
        tmp = Path(tempfile.mkdtemp())
        config = Config(backend="openai", base_url=url, model="fake", workers=workers)
        t0 = time.perf_counter()
        stats = build(str(source), tmp, config)
        seconds = time.perf_counter() - t0
        shutil.rmtree(tmp)
        seen = httpx.get(url + "/stats").json()
    finally:
        server.terminate()
        server.wait()
    calls, (first, last) = seen["requests"]["total"], seen["span"]
    return {
        "latency_s": latency,
        "workers": workers,
        "traces": stats["succeeded"],
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": calls / (last - first),
        "ideal_calls_per_s": workers / latency if latency else None,
    }


def main() -> None:
    source = Path(tempfile.mkdtemp()) / "traces.jsonl"
    _distinct_champ(source, TRACES)
    build(str(source), Path(tempfile.mkdtemp()), Config(limit=1))  # warm caches (tokenizer, numba)
    rows = [run(source, 0.0, 1)] + [run(source, 0.25, w) for w in (1, 2, 4, 8, 16)]
    for r in rows:
        print(r)
    lines = header(
        "Data pipeline throughput vs workers (OpenAI-compatible backend, loopback server)",
        "data_pipeline.py",
        f"{TRACES} distinct CHAMP solutions, default settings (judge rounds 2). Seconds include loading the tokenizer "
        "and the data; calls/s run from the first request to the last reply. "
        "Target (issue #18): >= 0.8 of ideal at 4-16 workers.",
    )
    lines += [
        "| server latency (s) | workers | LLM calls | seconds | calls/s | ideal workers/latency | of ideal "
        "| per trace (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ideal = f"{r['ideal_calls_per_s']:.1f}" if r["ideal_calls_per_s"] else "-"
        share = f"{r['calls_per_s'] / r['ideal_calls_per_s']:.2f}" if r["ideal_calls_per_s"] else "-"
        lines.append(
            f"| {r['latency_s']} | {r['workers']} | {r['calls']} | {r['seconds']:.1f} | "
            f"{r['calls_per_s']:.1f} | {ideal} | {share} | {r['seconds'] / max(r['traces'], 1):.3f} |"
        )
    write("data_pipeline", {"runs": rows}, lines)


if __name__ == "__main__":
    main()
