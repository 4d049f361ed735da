"""`memento bench throughput`: the workload keeps the real trace's shape, and the summaries measure what they say.

The engines themselves run in `benchmarks/throughput.py` (minutes); here, the parts that decide what is compared.
"""

from __future__ import annotations

import json

import pytest
from helpers import AIME_TRACE

from memento.core.chat import memento_ids
from memento.core.errors import MementoError
from memento.core.rows import read_traces
from memento.core.spans import Kind, label


@pytest.fixture(scope="module")
def bench():
    from memento.engine.vllm import bench

    return bench


def test_the_workload_follows_the_real_trace_block_by_block(bench, qwen, shared_examples):
    traces = read_traces(AIME_TRACE)
    full = bench.workload(qwen, traces, 5, 1.0, "aime")
    quarter = bench.workload(qwen, traces, 5, 0.25, "aime")
    special = memento_ids(qwen)
    assert len(set(map(tuple, full.prompts))) == 5  # distinct prompts: no shared prefix pages
    blocks = []
    for work in (full, quarter):
        for prompt, completion in zip(work.prompts, work.completions, strict=True):
            spans = label(prompt + completion, special, completion_start=len(prompt))
            assert spans.complete and spans.n_blocks == len(traces[0].blocks)  # every block of the trace, each time
            blocks.append(tuple(spans.count(Kind.BLOCK)))
    # request i starts with block i of the trace: the same block lengths, rotated
    assert blocks[1] == blocks[0][1:] + blocks[0][:1] and len(set(blocks[:5])) == 5
    ratio = sum(map(len, quarter.completions)) / sum(map(len, full.completions))
    assert 0.2 < ratio < 0.3  # scaled by the fraction asked for
    with pytest.raises(MementoError, match="scale"):
        bench.workload(qwen, traces, 2, 1.5, "aime")


def test_summary_weights_each_sample_by_how_long_it_held(bench):
    # 10 pages for 1 s, then 30 pages for 3 s: time-weighted mean 25 pages of a 100-page pool
    run = bench.Run("x", 4.0, 400, 0, 100, 16, [[0.0, 10, 1, 3], [1.0, 30, 3, 0]])
    s = run.summary()
    assert (s["peak_kv_pages"], s["max_running"]) == (30, 3)
    assert s["mean_kv_usage"] == pytest.approx(0.25)
    assert s["mean_running"] == pytest.approx(2.5)
    assert s["kv_tokens_per_running_request"] == pytest.approx(25 * 16 / 2.5)
    assert s["tokens_per_s"] == 100


def comparison(bench) -> dict:
    """A comparison as `bench.compare` returns it: Memento twice as fast from half the KV pages."""

    def run(engine, seconds, pages):
        return bench.Run(engine, seconds, 1000, 0, 64, 32, [[0.0, pages, 4, 0], [seconds / 2, pages // 2, 2, 0]])

    settings = {
        "model": "m",
        "dtype": "bfloat16",
        "requests": 4,
        "traces": "t",
        "scale": 0.5,
        "policy": {"keep_last_n_blocks": 0, "restart": False},
        "kv_pool_pages": 64,
        "block_size": 32,
        "kv_pool_tokens": 2048,
        "longest_request_tokens": 900,
        "completion_tokens": {"min": 250, "max": 250, "total": 1000},
    }
    ratios = {
        "throughput": 2.0,
        "completion_time": 2.0,
        "mean_running": 1.0,
        "max_running": 1.0,
        "kv_per_running_request": 2.0,
    }
    series = {"stock vLLM": [[0.0, 64, 4, 0]], "vLLM + Memento": [[0.0, 32, 4, 0]]}
    stock, mem = run("stock vLLM", 10.0, 64).summary(), run("vLLM + Memento", 5.0, 32).summary()
    return {"settings": settings, "stock": stock, "memento": mem, "ratios": ratios, "series": series}


def test_report_and_plot_of_a_comparison(bench, tmp_path):
    result = comparison(bench)
    text = "\n".join(bench.report(result, "memento bench throughput"))
    assert "| output tokens/s | 100.0 | 200.0 | 2.00x |" in text
    assert "1.75x" in text  # the paper's number, cited beside ours
    png = bench.plot(result, tmp_path / "kv.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_reports_are_written_for_one_comparison_or_several(bench, tmp_path):
    result = comparison(bench)
    ratios, series = result["ratios"], result["series"]
    lone = bench.write_report([bench.Section(None, "x", result)], tmp_path / "one", "cmd", "T")
    assert lone[0] == "# T" and "![KV usage over time](throughput.png)" in lone
    assert json.loads((tmp_path / "one" / "throughput.json").read_text())["ratios"] == ratios
    assert json.loads((tmp_path / "one" / "throughput-series.json").read_text()) == series
    sections = [bench.Section(f"pool {n}", f"pool{n}", result) for n in (4, 2)]
    lines = bench.write_report(sections, tmp_path / "two", "cmd", "T", notes="## Notes")
    assert "## pool 4" in lines and "![KV usage over time](throughput-pool2.png)" in lines and lines[-1] == "## Notes"
    assert set(json.loads((tmp_path / "two" / "throughput.json").read_text())) == {"pool4", "pool2"}
    assert (tmp_path / "two" / "throughput-pool4.png").read_bytes()[:4] == b"\x89PNG"
