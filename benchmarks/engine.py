"""Reference-engine benchmark: decode tokens/s at batch 1 / 4 / 16, with and without eviction, and the cost of one
eviction (freeing the block's slots; restart's recomputation rides in the next decode forward, so it shows in
tokens/s, not in the eviction time).

Run: .venv/bin/python benchmarks/engine.py   (writes benchmarks/results/engine.md and .json)

Workload: 16 requests whose completions are forced Memento traces of the toy "add the numbers" task with long
blocks (8 terms each) and short mementos, so every request really evicts; the model is a random 4-layer Llama
(hidden 128, the paper's toy size) with the character tokenizer. Forcing runs exactly the decode path of sampling
(one forward per token per request, labelling, eviction), minus the choice of the token.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.core.chat import encode_chat, memento_ids
from memento.core.format import render
from memento.core.policy import EvictionPolicy
from memento.engine.batch import Engine
from memento.engine.reference import Decoder
from memento.synthetic.sums import sums_traces
from memento.tokenizer import char_tokenizer

REQUESTS = 16
POLICIES = {"full": EvictionPolicy(-1), "keep0": EvictionPolicy(0), "keep0 restart": EvictionPolicy(0, restart=True)}


def model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@contextmanager
def timed_evictions():
    """Record the wall time of every eviction while inside (benchmark instrumentation only)."""
    spent: list[float] = []
    evict = Decoder.evict

    def wrapper(*args):
        start = time.perf_counter()
        redo = evict(*args)
        spent.append(time.perf_counter() - start)
        return redo

    Decoder.evict = wrapper
    try:
        yield spent
    finally:
        Decoder.evict = evict


def main() -> None:
    torch.set_num_threads(2)
    tokenizer = char_tokenizer()
    net = model(len(tokenizer))
    traces = sums_traces(REQUESTS, seed=0, blocks=(4, 6), terms=8)
    encoded = [encode_chat(tokenizer, t.problem, render(t)) for t in traces]
    forced = [e.ids[e.completion_start :] for e in encoded]
    prompts = [e.ids[: e.completion_start] for e in encoded]
    tokens = sum(len(f) for f in forced)
    rows, data = [], {"requests": REQUESTS, "completion_tokens": tokens, "runs": []}
    for name, policy in POLICIES.items():
        for batch in (1, 4, 16):
            engine = Engine(net, memento_ids(tokenizer), policy)
            with timed_evictions() as spent:
                engine.generate(prompts[:2], force=forced[:2], batch_size=batch)  # warm-up
                spent.clear()
                start = time.perf_counter()
                out = engine.generate(prompts, force=forced, batch_size=batch)
                seconds = time.perf_counter() - start
            evictions = sum(g.stats.evictions for g in out)
            peak = max(g.stats.peak_kv_tokens for g in out)
            run = {
                "policy": name,
                "batch": batch,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "evictions": evictions,
                "ms_per_eviction": 1000 * sum(spent) / len(spent) if spent else 0.0,
                "eviction_share": sum(spent) / seconds,
                "max_peak_kv_tokens": peak,
            }
            data["runs"].append(run)
            rows.append(
                f"| {name} | {batch} | {run['tokens_per_s']:,.0f} | {seconds:.1f} | {evictions} | "
                f"{run['ms_per_eviction']:.2f} | {100 * run['eviction_share']:.1f}% | {peak} |"
            )
    by = {(r["policy"], r["batch"]): r["tokens_per_s"] for r in data["runs"]}
    speedups = {p: by[(p, 16)] / by[(p, 1)] for p in POLICIES}
    data["batch16_over_batch1"] = speedups
    lines = header(
        "Reference engine: decode throughput and eviction cost (CPU)",
        "engine.py",
        f"{REQUESTS} requests, {tokens:,} forced completion tokens (toy sums, 4-6 blocks of 8 terms), random 4-layer "
        "Llama (d=128), character tokenizer, fp32, 2 threads.",
    )
    lines += [
        "| policy | batch | tokens/s | seconds | evictions | ms / eviction | time in eviction | max peak KV tokens |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Batch 16 vs batch 1: " + ", ".join(f"{p} {s:.1f}x" for p, s in speedups.items()) + " (target >= 4x).",
    ]
    write("engine", data, lines)


if __name__ == "__main__":
    main()
