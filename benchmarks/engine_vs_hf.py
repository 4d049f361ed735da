"""The reference engine against Hugging Face `generate`: decode tokens/s at batch 1 and 8 on the same model, greedy,
the same number of new tokens, no eviction (policy `full`: what HF can do), and with eviction (keep 0) for scale.

Run: .venv/bin/python benchmarks/engine_vs_hf.py   (writes benchmarks/results/engine_vs_hf.md and .json)

Model: SmolLM2-135M-Instruct with the Memento tokens (real weights, 30 layers), fp32, on the CPU. Every request
decodes exactly NEW tokens: the end-of-turn tokens are banned in both engines (HF: `min_new_tokens`). Prompts are
eight real chat prompts of different lengths (HF pads them on the left; the reference engine needs no padding).
The numbers say what the reference engine's bookkeeping (labels, slots, explicit masks) costs against HF's own
loop; it is a correctness engine, vLLM is the fast one.
"""

from __future__ import annotations

import time

import torch
from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.core.policy import EvictionPolicy
from memento.engine.generate import ReferenceEngine
from memento.engine.sampling import Sampling
from memento.tokenizer import smollm2_memento_dir

NEW = 96
PROMPTS = [
    "What is 17 times 23?",
    "Name three prime numbers larger than 50 and explain how you checked them.",
    "Solve for x: 3x + 7 = 25.",
    "Write a short proof that the square root of 2 is irrational.",
    "How many ways can 5 books be arranged on a shelf?",
    "Explain why the sum of the angles of a triangle is 180 degrees.",
    "What is the derivative of x^3 sin(x)?",
    "A train travels 120 km in 1.5 hours. What is its average speed?",
]


def reference(engine: ReferenceEngine, prompts: list[str]) -> float:
    stops = engine.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])

    def ban(request, ids, logits):
        logits[stops] = float("-inf")
        return logits

    start = time.perf_counter()
    done = engine.generate(prompts, Sampling(max_new_tokens=NEW), batch_size=len(prompts), processor=ban)
    seconds = time.perf_counter() - start
    assert all(len(g.ids) == NEW for g in done)
    return seconds


def hf(model, tokenizer, prompts: list[str]) -> float:
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    seconds = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == NEW
    return seconds


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_memento_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engines = {name: ReferenceEngine.from_pretrained(folder, EvictionPolicy.named(name)) for name in ("full", "keep0")}
    hf(model, tokenizer, PROMPTS[:1])  # warm up both
    reference(engines["full"], PROMPTS[:1])
    rows = []
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        runs = {"HF generate": hf(model, tokenizer, prompts)}
        runs |= {f"reference, {name}": reference(engine, prompts) for name, engine in engines.items()}
        for name, seconds in runs.items():
            rows.append({"engine": name, "batch": batch, "tokens": NEW * batch, "seconds": seconds})
    lines = header(
        "Reference engine vs Hugging Face generate (CPU)",
        "engine_vs_hf.py",
        f"SmolLM2-135M-Instruct + Memento tokens, fp32, {torch.get_num_threads()} threads, greedy, {NEW} new tokens "
        "per request (end-of-turn banned); CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}. No eviction happens in these untrained outputs unless the model "
        "writes blocks; `full` is the like-for-like comparison.",
    )
    lines += ["| engine | batch | tokens/s | seconds | vs HF |", "|---|---|---|---|---|"]
    base = {r["batch"]: r["tokens"] / r["seconds"] for r in rows if r["engine"] == "HF generate"}
    for r in rows:
        rate = r["tokens"] / r["seconds"]
        lines.append(
            f"| {r['engine']} | {r['batch']} | {rate:,.0f} | {r['seconds']:.2f} | {rate / base[r['batch']]:.2f}x |"
        )
    write("engine_vs_hf", {"runs": rows}, lines)


if __name__ == "__main__":
    main()
