"""Token statistics of labelled Memento traces (what `memento inspect` prints; labelling: `memento.core.chat`).

Counts come from the span labels of the encoded chat, so they are exactly the tokens a model trains on and
generates: block tokens exclude the delimiters, memento tokens likewise.
"""

from __future__ import annotations

import numpy as np

from memento.core.chat import Labelled
from memento.core.spans import Kind


def trace_stats(labelled: Labelled) -> dict:
    spans = labelled.spans
    block = spans.count(Kind.BLOCK)
    memento = spans.count(Kind.SUMMARY)
    return {
        "blocks": spans.n_blocks,
        "block_tokens": block.tolist(),
        "memento_tokens": memento.tolist(),
        "compression_ratio": float(memento.sum() / block.sum()) if block.sum() else 0.0,
        "block_compression": [float(m / b) if b else 0.0 for m, b in zip(memento, block, strict=True)],
        "prompt_tokens": labelled.encoded.completion_start,
        "answer_tokens": int(np.count_nonzero(spans.kind == Kind.ANSWER)),
        "total_tokens": len(spans),
    }


def summarize(stats: list[dict]) -> dict:
    """Medians and totals over traces, in the shape the paper reports them."""
    if not stats:
        return {"traces": 0}
    blocks = [s["blocks"] for s in stats]
    block_tokens = [t for s in stats for t in s["block_tokens"]]
    memento_tokens = [t for s in stats for t in s["memento_tokens"]]
    per_block = [c for s in stats for c in s["block_compression"]]
    return {
        "traces": len(stats),
        "blocks_median": float(np.median(blocks)),
        "block_tokens_mean": float(np.mean(block_tokens)) if block_tokens else 0.0,
        "memento_tokens_mean": float(np.mean(memento_tokens)) if memento_tokens else 0.0,
        "block_compression_median": float(np.median(per_block)) if per_block else 0.0,
        "compression_ratio": float(sum(memento_tokens) / sum(block_tokens)) if sum(block_tokens) else 0.0,
    }
