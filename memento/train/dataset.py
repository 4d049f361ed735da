"""Memento traces -> training examples (token ids, labels, token kinds) and padded batches.

Design choices:
- One example per trace, tokenized as a one-turn chat exactly as the engines will see it (`encode_chat`); the loss
  covers every completion token, the Memento special tokens and the end-of-turn included; the prompt is -100.
- Token kinds come from `spans.label`, the same labeller the engines run, and the eviction schedule of the batch is
  computed at collate time from them, so a stage's mask is whatever its `EvictionPolicy` says.
- Sequences longer than `max_length`: `truncate` cuts after the last memento that fits (a prefix of whole blocks, no
  answer; the model still learns blocks and mementos from it), `drop` skips them. Either way they are counted; a
  trace whose prompt plus first block and memento do not fit is always dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memento.core.chat import label_trace, memento_ids
from memento.core.errors import MementoError
from memento.core.format import Trace
from memento.core.policy import EvictionPolicy
from memento.core.rows import iter_traces
from memento.core.spans import Kind, Spans, label
from memento.train.masks import recompute_triggers, schedules

log = logging.getLogger(__name__)

OVERLONG = ("truncate", "drop")
IGNORE = -100


@dataclass(frozen=True, slots=True)
class Example:
    ids: np.ndarray  # (T,) int64
    completion_start: int
    spans: Spans

    def __len__(self) -> int:
        return len(self.ids)


def fit(example: Example, max_length: int, special) -> Example | None:
    """The example cut after its last `<|summary_end|>` (and the newline after it) that fits, or None."""
    if len(example) <= max_length:
        return example
    ends = np.flatnonzero((example.ids == special.summary_end) & (example.spans.kind == Kind.SUMMARY_END))
    ends = ends[ends < max_length]
    if not len(ends):
        return None
    cut = int(ends[-1]) + 1
    while cut < max_length and example.spans.kind[cut] == Kind.SUMMARY_END:  # the glue after it
        cut += 1
    ids = example.ids[:cut]
    return Example(ids, example.completion_start, label(ids, special, example.completion_start))


def build_examples(
    traces: Iterable[Trace], tokenizer, max_length: int, overlong: str = "truncate", plain: bool = False
) -> tuple[list[Example], Counter]:
    """Tokenize and label traces; return the examples and counts (`examples`, `truncated`, `dropped`).

    `plain`: in the Control format (`format.render_plain`: the reasoning without blocks or mementos); overlong plain
    examples have no memento to cut after, so they are dropped."""
    if overlong not in OVERLONG:
        raise MementoError(f"overlong must be one of {', '.join(OVERLONG)}, got '{overlong}'")
    special = memento_ids(tokenizer)
    out, counts = [], Counter()
    for trace in traces:
        encoded, spans = label_trace(trace, tokenizer, plain)
        example = Example(np.asarray(encoded.ids, dtype=np.int64), encoded.completion_start, spans)
        if len(example) > max_length:
            example = fit(example, max_length, special) if overlong == "truncate" and not plain else None
            counts["truncated" if example is not None else "dropped"] += 1
            if example is None:
                continue
        out.append(example)
    counts["examples"] = len(out)
    if counts["truncated"] or counts["dropped"]:
        log.info(
            "sequences over %d tokens: %d truncated, %d dropped", max_length, counts["truncated"], counts["dropped"]
        )
    return out, counts


def load_examples(paths: str | Path | list, tokenizer, max_length: int, overlong: str = "truncate", plain=False):
    """`build_examples` over OpenMementos rows / segments files (JSONL, JSON, Parquet) or `toy:` task specs."""
    from memento.synthetic.tasks import from_spec

    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    traces = [t for p in paths for t in (from_spec(p) if str(p).startswith("toy:") else iter_traces(Path(p)))]
    if not traces:
        raise MementoError(f"no traces in {', '.join(map(str, paths))}")
    return build_examples(traces, tokenizer, max_length, overlong, plain)


class Collator:
    """Pads a list of examples on the right into tensors; `policy=None` means plain causal attention.

    Returns input_ids, labels, attention_mask, position_ids, kind (token kinds, PAD at padding), schedule (B, T)
    and pad (B, T) bool, and redo (B, T) when some tokens are recomputed by the rule of a trigger (the release's
    restart mode, or `forget`); the trainer turns schedule + pad (+ redo) into the mask its attention implementation
    reads: `model_mask(model, batch["schedule"], batch["pad"], policy.restart, batch.get("redo"))`.

    `forget` (selective strict forgetting): per example, the blocks (0-based, `Spans.block`) forgotten strictly, in
    the policy's restart_mode and whatever its `restart`; the other blocks are evicted normally. The mask then
    equals the engines' KV with `Sampling.forget` flagging those blocks.
    """

    def __init__(self, pad_token_id: int, policy: EvictionPolicy | None = None):
        self.pad_token_id = pad_token_id
        self.policy = policy

    def __call__(self, examples: list[Example], forget: list[set[int]] | None = None) -> dict[str, torch.Tensor]:
        b, n = len(examples), max(len(e) for e in examples)
        ids = torch.full((b, n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, n), IGNORE, dtype=torch.long)
        kind = torch.full((b, n), int(Kind.PAD), dtype=torch.long)
        attention = torch.zeros((b, n), dtype=torch.long)
        for row, e in enumerate(examples):
            t = len(e)
            ids[row, :t] = torch.from_numpy(e.ids)
            labels[row, e.completion_start : t] = ids[row, e.completion_start : t]
            kind[row, :t] = torch.from_numpy(e.spans.kind.astype(np.int64))
            attention[row, :t] = 1
        spans = [e.spans for e in examples]
        redo = recompute_triggers(spans, self.policy, n, forget)  # the release's restart mode, or `forget`
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": attention,
            "position_ids": torch.arange(n).expand(b, n).clone(),
            "kind": kind,
            "schedule": schedules(spans, self.policy, n),
            "pad": attention == 0,
        } | ({} if redo is None else {"redo": redo})
