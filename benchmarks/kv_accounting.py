"""KV accounting benchmark: Memento's peak-KV / AUC savings per model preset, and the simulator's speed.

Run: .venv/bin/python benchmarks/kv_accounting.py   (writes benchmarks/results/kv_accounting.md and .json)

Inputs: the paper's AIME 2025 P5 trace (../shared, if present), the project's worked example, and a synthetic
long trace (30 blocks of ~1,000 tokens with ~150-token mementos, about the paper's OpenMementos averages) to time
the token-replay simulator at the paper's scale.
"""

from __future__ import annotations

import time
from pathlib import Path

from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.core.chat import label_trace
from memento.core.format import Block, Trace
from memento.core.kv import PRESETS, compare
from memento.core.policy import EvictionPolicy
from memento.core.rows import read_traces
from memento.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "data" / "memento-examples" / "memento_trace_aime25_p5.json"


def synthetic_trace(blocks: int = 30) -> Trace:
    step = "We expand the product term by term and collect the coefficients carefully. "  # ~15 tokens
    return Trace("A long synthetic problem.", [Block(step * 66, "Result: x=3. " * 30) for _ in range(blocks)], "42")


def main() -> None:
    tokenizer = load_tokenizer("qwen")
    inputs = {"worked example": read_traces(ROOT / "memento" / "examples" / "worked_example.json")[0]}
    if PAPER.exists():
        inputs["paper AIME25 P5"] = read_traces(PAPER)[0]
    inputs["synthetic 30 x 1K"] = synthetic_trace()
    rows, timings = [], []
    for name, trace in inputs.items():
        t0 = time.perf_counter()
        labelled = label_trace(trace, tokenizer)
        t1 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            compare(labelled.spans, EvictionPolicy(), PRESETS["qwen3-8b"], labelled.encoded.completion_start)
        t2 = time.perf_counter()
        n = len(labelled.spans)
        timings.append(
            {
                "trace": name,
                "tokens": n,
                "encode_label_ms": 1e3 * (t1 - t0),
                "replay_full_vs_keep0_ms": 1e3 * (t2 - t1) / reps,
            }
        )
        for preset in PRESETS.values():
            for policy in ("keep0", "keep1"):
                s = compare(labelled.spans, EvictionPolicy.named(policy), preset, labelled.encoded.completion_start)
                rows.append({"trace": name, "tokens": n, "model": preset.name, "policy": policy} | s.summary())
    lines = header(
        "KV accounting: Memento vs full attention (token replay)",
        "kv_accounting.py",
        "Tokens counted with the Qwen3 vocabulary (stand-in for phi-4 and OLMo-3). GB = 1e9 bytes.",
    )
    lines += [
        "| trace | tokens | model | policy | full peak GB | memento peak GB | peak ratio | AUC ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trace']} | {r['tokens']} | {r['model']} | {r['policy']} | {r['full_peak_bytes'] / 1e9:.3f} "
            f"| {r['memento_peak_bytes'] / 1e9:.3f} | {r['peak_ratio']:.2f} | {r['auc_ratio']:.2f} |"
        )
    lines += [
        "",
        "## Simulator speed",
        "",
        "| trace | tokens | encode + label (ms) | replay full + keep0 (ms) |",
        "|---|---|---|---|",
    ]
    for t in timings:
        lines.append(
            f"| {t['trace']} | {t['tokens']} | {t['encode_label_ms']:.1f} | {t['replay_full_vs_keep0_ms']:.2f} |"
        )
    write("kv_accounting", {"savings": rows, "timing": timings}, lines)


if __name__ == "__main__":
    main()
