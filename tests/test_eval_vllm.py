"""`memento eval --engine vllm`: the same samples and KV statistics as the reference engine (toy model, fp32)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from memento.core.policy import EvictionPolicy
from memento.eval.run import EvalSettings, evaluate
from memento.toy.demo import SHIPPED
from memento.toy.experiments import EVICT

pytestmark = [pytest.mark.xdist_group("vllm"), pytest.mark.slow]


def test_vllm_engine_matches_the_reference_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    records = {}
    for engine in ("reference", "vllm"):
        settings = EvalSettings(
            str(SHIPPED / "curriculum"),
            "toy:orbit",
            max_new_tokens=1024,
            policy=asdict(EVICT),
            engine=engine,
            dtype="float32",
        )
        summary = evaluate(settings, tmp_path / engine, limit=2, progress=False)
        assert summary["engine"] == engine and summary["generated_now"] == 2
        lines = (tmp_path / engine / "results.jsonl").read_text().splitlines()
        records[engine] = [json.loads(line) for line in lines]
    assert all(r["blocks"] >= 5 and r["evicted_tokens"] > 0 for r in records["vllm"])  # eviction really happened
    # greedy in fp32: the same text, verdicts, blocks, memento sizes, peak (scheduler) and AUC (replayed) KV
    assert records["vllm"] == records["reference"]


def test_a_base_model_runs_on_stock_vllm(smollm2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    records = {}
    for engine in ("reference", "vllm"):
        settings = EvalSettings(
            str(smollm2_dir),
            "gym:basic_arithmetic",
            max_new_tokens=8,
            engine=engine,
            policy=asdict(EvictionPolicy(-1)),
            dtype="float32",
        )
        evaluate(settings, tmp_path / engine, limit=1, progress=False)
        lines = (tmp_path / engine / "results.jsonl").read_text().splitlines()
        records[engine] = [json.loads(line) for line in lines]
    assert all(r["blocks"] == 0 and r["tokens"] == 8 for r in records["vllm"])
    assert records["vllm"] == records["reference"]  # no Memento tokens: the same text and KV as the reference
