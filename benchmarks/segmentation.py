"""Segmentation speed of the exact DP, and the offline pipeline's overhead per trace.

Run: .venv/bin/python benchmarks/segmentation.py   (writes benchmarks/results/segmentation.md and .json)

Units have the paper's average size after merging (~58 tokens: ~10,900 tokens / ~187 units), drawn from
5-110 tokens; boundary scores are drawn 0-3 with the skew of the heuristic scorer on a real QwQ trace
(46% 0, 37% 1, 17% 2); the paper's objective (sum of cut scores / blocks - 0.5 CV); blocks of 200+ tokens, with no
cap (the default, as the paper) and with an opt-in 1,536-token cap.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import header, write  # benchmarks/results_file.py (scripts run from benchmarks/)

from memento.data.pipeline import Config, build
from memento.data.segment import segment

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "memento-examples" / "raw_trace_ot3.jsonl"


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    segment([300, 300], [3.0])  # numba compile (cached on disk after the first run)
    rows = []
    for n in (100, 200, 400, 1000):
        lengths = rng.integers(5, 111, n)
        scores = rng.choice([0, 1, 2, 3], n - 1, p=[0.46, 0.37, 0.17, 0.0]).astype(float)
        for cap in (None, 1536):
            repeats = 3 if n < 1000 else 1
            seconds = timed(lambda a=lengths, s=scores, c=cap: segment(a, s, 0.5, 200, c), repeats)
            seg = segment(lengths, scores, 0.5, 200, cap)
            rows.append(
                {
                    "units": n,
                    "tokens": int(lengths.sum()),
                    "max_block_tokens": cap,
                    "seconds": seconds,
                    "blocks": len(seg.blocks),
                }
            )
            print(rows[-1])
    pipeline = {}
    for spec, limit in (("champ", 100), (str(RAW), None)):
        if spec != "champ" and not RAW.exists():
            continue
        tmp = Path(tempfile.mkdtemp())
        t0 = time.perf_counter()
        stats = build(spec, tmp, Config(limit=limit))
        pipeline[Path(spec).name] = {"traces": stats["traces"], "seconds": time.perf_counter() - t0}
        shutil.rmtree(tmp)
        print(pipeline)
    lines = header(
        "Exact segmentation and offline pipeline speed",
        "segmentation.py",
        "Targets (issues #3, #18): <= 200 ms at 200 units, <= 1 s at 400 units.",
    )
    lines += [
        "| units | tokens | max block tokens | seconds (best of 3) | blocks |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cap = r["max_block_tokens"] or "none"
        lines.append(f"| {r['units']} | {r['tokens']} | {cap} | {r['seconds']:.3f} | {r['blocks']} |")
    lines += [
        "",
        "| offline pipeline input | traces | seconds (incl. tokenizer load) | per trace |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['traces']} | {v['seconds']:.1f} | {v['seconds'] / v['traces']:.3f} |" for k, v in pipeline.items()
    ]
    write("segmentation", {"segment": rows, "pipeline": pipeline}, lines)


if __name__ == "__main__":
    main()
