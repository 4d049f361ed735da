"""`memento serve`: vLLM's OpenAI-compatible server with Memento, over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.xdist_group("vllm"), pytest.mark.slow]

TOY = Path(__file__).resolve().parents[1] / "memento" / "toy" / "checkpoints" / "curriculum"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(log.parent / "cache")}
    command = [
        sys.executable,
        "-m",
        "memento",
        "serve",
        str(TOY),
        "--port",
        str(port),
        "--",
        "--max-model-len",
        "1024",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--block-size",
        "32",
    ]
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"memento serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"memento serve did not come up in 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def reference():
    """The reference engine's greedy answers (computed before the server starts: an idle engine busy-polls)."""
    from memento.core.policy import EvictionPolicy
    from memento.engine.generate import ReferenceEngine
    from memento.engine.sampling import Sampling
    from memento.synthetic.orbit import orbit_traces

    problem = orbit_traces(1, seed=3, split="test")[0].problem
    engine = ReferenceEngine.from_pretrained(TOY)
    greedy = Sampling(temperature=0, max_new_tokens=900)
    runs = {}
    for name in ("keep0", "keep1"):
        policy = EvictionPolicy.named(name)
        runs[name] = ReferenceEngine(engine.model, engine.tokenizer, policy).generate(problem, greedy)[0]
    return problem, engine.tokenizer, runs


def test_serve_streams_a_memento_chat_completion_with_kv_statistics(reference, server):
    import httpx
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    from memento.core.chat import encode_chat

    problem, tokenizer, expected = reference
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": problem}]
    plain = {"skip_special_tokens": False}
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, max_tokens=900, temperature=0, extra_body=plain
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    text = "".join(chunks)
    assert len(chunks) > 10  # streamed, not one piece
    ids = expected["keep0"].ids
    ids = ids[:-1] if ids[-1] == tokenizer.eos_token_id else ids  # vLLM leaves the stop token out of the text
    assert text == tokenizer.decode(ids, skip_special_tokens=False)  # the reference engine's text
    for token in ("<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>", "</think>"):
        assert token in text

    reply = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=900,
        temperature=0,
        extra_body=plain | {"return_token_ids": True, "vllm_xargs": {"memento_policy": "keep1"}},
    )
    assert reply.model_extra["prompt_token_ids"] == encode_chat(tokenizer, problem).ids  # the Memento chat template
    assert reply.choices[0].model_extra["token_ids"] == expected["keep1"].ids  # greedy tokens of the reference
    stats = reply.model_extra["kv_transfer_params"]["memento"]
    assert stats["evicted_tokens"] == expected["keep1"].stats.evicted_tokens
    total = reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert stats["evictions"] >= 3 and stats["evicted_tokens"] > 0
    assert stats["peak_kv_tokens"] < total - stats["evicted_tokens"] // 2  # it really held less than all its tokens

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, extra_body={"vllm_xargs": {"memento_policy": "keepx"}}
        )
    assert "keepx" in str(bad.value)
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": model, "messages": "not a list"})
    assert 400 <= response.status_code < 500 and "error" in response.json()
    metrics = httpx.get(f"{server}/metrics").text
    assert "vllm:kv_cache_usage_perc" in metrics
    values = {s.name: s.value for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert values["memento:requests_total"] == 2  # the two answered requests; the refused ones never ran
    assert values["memento:evictions_total"] > stats["evictions"]  # both requests evicted blocks
    assert values["memento:evicted_tokens_total"] > stats["evicted_tokens"]
    assert values["memento:peak_kv_tokens_count"] == 2


def test_live_kv_on_metrics_agrees_with_the_replay_for_every_request(reference, server, tmp_path):
    """The paper's server mode: /metrics polled while requests run; each request's peak there equals (within 2%)
    the token-replay simulation of its output."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import pairwise

    import openai

    from memento.core.chat import memento_ids
    from memento.core.policy import EvictionPolicy
    from memento.eval.live import MetricsPoller, compare, read_polls, simulated_peak
    from memento.synthetic.orbit import orbit_traces

    _, tokenizer, _ = reference
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    model = client.models.list().data[0].id
    problems = [t.problem for t in orbit_traces(4, seed=11, split="test")]

    def ask(problem):
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": problem}],
            max_tokens=900,
            temperature=0,
            extra_body={"return_token_ids": True, "skip_special_tokens": False},
        )

    log = tmp_path / "kv_live.jsonl"
    with MetricsPoller(server, log, interval=0.02) as poller, ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, problems))
    special, policy = memento_ids(tokenizer), EvictionPolicy.named("keep0")
    simulated = {
        r.model_extra["kv_transfer_params"]["memento"]["request_id"]: simulated_peak(
            r.model_extra["prompt_token_ids"], r.choices[0].model_extra["token_ids"], special, policy
        )
        for r in replies
    }
    polls = read_polls(log)
    rows = compare(polls, simulated)
    assert len(rows) == 4 and poller.polls > 10
    assert all(row["relative_difference"] <= 0.02 for row in rows), rows
    assert any(row["polls"] > 3 for row in rows)  # seen while running, not only once finished
    for request in simulated:  # held goes down when a block is evicted: the gauge is live, not a running maximum
        held = [p["held"] for p in polls[request]]
        assert any(b < a for a, b in pairwise(held)), held


def test_eval_against_the_server_checks_its_live_kv(server, tmp_path):
    """`memento eval --engine server`: samples from the running server, /metrics polled into kv_live.jsonl, and
    every sample's live peak compared with its replay."""
    from memento.core.policy import EvictionPolicy
    from memento.eval.run import evaluate, read_records
    from memento.eval.settings import EvalSettings

    keep1 = EvictionPolicy(1, mask_delimiters=True)
    settings = EvalSettings(str(TOY), "toy:orbit", max_new_tokens=900, engine="server", policy=keep1)
    summary = evaluate(settings, tmp_path, limit=3, progress=False, server=server)
    records = read_records(tmp_path)
    assert len(records) == 3 and all(r["request"] for r in records)
    assert summary["live_kv"] == {
        "requests": 3,
        "max_relative_difference": summary["live_kv"]["max_relative_difference"],
        "missing": 0,
    }
    assert summary["live_kv"]["max_relative_difference"] <= 0.02
    # the server runs keep0; each sample's peak was checked against a keep1 replay: the run's policy went along
    assert summary["evicted_tokens"] > 0 and summary["blocks"] > 2
    compared = json.loads((tmp_path / "kv_live_compare.json").read_text())
    assert {row["request"] for row in compared} == {r["request"] for r in records}
