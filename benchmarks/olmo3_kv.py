"""OLMo-3-7B-Think's KV, counted two ways on the same tokens: `memento kv --model olmo-3-7b-think` (the token-replay
simulator) and the reference engine's measurement while it decodes with physical eviction.

Run: .venv/bin/python benchmarks/olmo3_kv.py   (writes benchmarks/results/olmo3_kv.md and .json; ~10 min on 2 cores)

The trace is the paper's AIME 2025 P5 trace (../shared), 5,545 Qwen3 tokens: longer than OLMo-3's 4,096-token
window, so the sliding layers really forget. The engine decodes it (teacher-forced) on a random model with OLMo-3-7B's
attention layout: 32 layers, every fourth one full attention, the other 24 sliding over 4,096 tokens. What the engine
measures is tokens held per layer group after every fed token; bytes follow from the geometry, here the preset's
(32 KV heads of 128 dims, bf16), since the layout, not the width, decides which tokens each layer holds. `memento kv`
counts with the Qwen3 vocabulary (no offline OLMo tokenizer); the engine is given the same tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "memento-examples" / "memento_trace_aime25_p5.json"
POLICIES = ("keep0", "keep1", "full")


def olmo3_layout(vocab: int):
    """A random Olmo3 with OLMo-3-7B's layer types and window, narrow everywhere else."""
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM

    torch.manual_seed(0)
    types = (["sliding_attention"] * 3 + ["full_attention"]) * 8
    config = Olmo3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=4096,
        layer_types=types,
        max_position_embeddings=8192,
        attn_implementation="sdpa",
    )
    return Olmo3ForCausalLM(config).eval()


def kv_cli(policy: str) -> dict:
    cmd = [sys.executable, "-m", "memento", "kv", str(TRACE), "--model", "olmo-3-7b-think", "--policy", policy]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def main() -> None:
    from tqdm import tqdm

    from memento.core.chat import label_trace
    from memento.core.kv import KVGeometry, preset
    from memento.core.policy import EvictionPolicy
    from memento.core.rows import read_traces
    from memento.engine.generate import ReferenceEngine
    from memento.tokenizer import load_tokenizer

    if not TRACE.exists():
        sys.exit(f"{TRACE} is missing: this benchmark needs the paper's traces in ../shared")
    tokenizer = load_tokenizer("qwen")
    [trace] = read_traces(TRACE)
    encoded, _ = label_trace(trace, tokenizer)
    force = encoded.ids[encoded.completion_start :]
    model = olmo3_layout(len(tokenizer))
    geometry = preset("olmo-3-7b-think")
    layout = KVGeometry.from_config(model.config)
    assert (layout.layers, layout.sliding_layers, layout.window) == (geometry.layers, 24, geometry.window)
    rows = []
    for name in tqdm(POLICIES, desc="policies"):
        engine = ReferenceEngine(model, tokenizer, EvictionPolicy.named(name))
        engine.engine.geometry = geometry  # bytes per token of OLMo-3-7B; the layout above decides the tokens
        started = time.perf_counter()
        done = engine.generate(trace.problem, force=[force])[0]
        seconds = time.perf_counter() - started
        cli = kv_cli(name)
        simulated = cli["memento_peak_bytes"] if name != "full" else cli["full_peak_bytes"]
        rows.append(
            {
                "policy": name,
                "tokens": len(done.prompt_ids) + len(done.ids),
                "engine_peak_bytes": done.stats.peak_kv_bytes,
                "memento_kv_peak_bytes": simulated,
                "equal": done.stats.peak_kv_bytes == simulated,
                "engine_seconds": round(seconds, 1),
            }
        )
    lines = header(
        "OLMo-3-7B-Think: `memento kv` vs the reference engine's measured peak KV",
        "olmo3_kv.py",
        "Same 5,545 tokens (the paper's AIME 2025 P5 trace, Qwen3 vocabulary); OLMo-3-7B-Think's layout and "
        "geometry (24 of 32 layers sliding over 4,096 tokens; 512 KiB per token over the 32 layers, bf16).",
    )
    lines += ["| policy | tokens | engine peak (GB) | memento kv peak (GB) | equal |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['tokens']} | {r['engine_peak_bytes'] / 1e9:.4f} | "
            f"{r['memento_kv_peak_bytes'] / 1e9:.4f} | {r['equal']} |"
        )
    write("olmo3_kv", {"rows": rows}, lines)
    if not all(r["equal"] for r in rows):
        sys.exit("the engine's measured peak differs from memento kv's")


if __name__ == "__main__":
    main()
