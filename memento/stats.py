"""Token statistics of Memento traces (what `memento inspect` prints), counted with a real tokenizer.

Counts come from the span labels of the encoded chat, so they are exactly the tokens a model trains on and
generates: block tokens exclude the delimiters, memento tokens likewise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from memento.format import Trace, render, render_plain
from memento.spans import Kind, Spans, label
from memento.tokenizer import Encoded, encode_chat, memento_ids


class Labelled(NamedTuple):
    encoded: Encoded
    spans: Spans


def label_trace(trace: Trace, tokenizer, plain: bool = False) -> Labelled:
    """Encode `trace` as a one-turn chat and label every token; `plain`: in the Control format (`render_plain`),
    whose reasoning is labelled as the glue after `<think>` (it has no blocks)."""
    encoded = encode_chat(tokenizer, trace.problem, render_plain(trace) if plain else render(trace))
    return Labelled(encoded, label(encoded.ids, memento_ids(tokenizer), encoded.completion_start))


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
