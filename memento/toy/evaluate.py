"""Task accuracy, KV and speed of a toy model under one policy, scored by `memento eval` (one harness).

Every problem of the toy task's held-out scoring set (`toy:NAME` in `memento.eval.tasks.toy`: the last `\\boxed{...}`
of the completion must equal the reference's) is generated greedily on the reference engine from its prompt alone;
the records land in a run folder as with `memento eval`. On top of the run's summary the toy adds one figure of its
own: the share of completions that parse as complete Memento (or, for the Control, plain) responses. Proportions come
with Wilson 95% intervals; paired differences of two runs on the same problems come from `memento.eval.run.paired`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from memento.core.format import recover
from memento.core.policy import EvictionPolicy
from memento.eval import run
from memento.eval.settings import EvalSettings


class Scores(NamedTuple):
    n: int
    correct: list[bool]  # per problem
    accuracy: float
    ci: tuple[float, float]
    well_formed: float  # share of completions that parse as complete Memento (or plain) responses
    peak_kv_tokens: float  # mean over problems
    auc_ktok: float  # mean over problems of sum(KV tokens held) / 1000
    generated_tokens: float  # mean
    tokens_per_s: float  # all generated tokens / wall time
    records: list[dict]  # the run's records, one per problem (as in its results.jsonl)


def score(summary: dict, records: list[dict], plain: bool = False) -> Scores:
    """A toy run's scores from its `memento eval` summary and records (one greedy sample per problem)."""
    tokens = sum(r["tokens"] for r in records)
    return Scores(
        n=summary["problems"],
        correct=[r["outcome"] == "correct" for r in records],
        accuracy=summary["pass@1"],
        ci=tuple(summary["pass@1_ci95"]),
        well_formed=float(np.mean([well_formed(r["text"], plain) for r in records])),
        peak_kv_tokens=summary["peak_kv_tokens"],
        auc_ktok=summary["auc_kv_ktok"],
        generated_tokens=summary["tokens"],
        tokens_per_s=tokens / max(summary["seconds_now"], 1e-9),
        records=records,
    )


def well_formed(text: str, plain: bool) -> bool:
    text = text.removesuffix("<|im_end|>")
    if plain:
        return text.startswith("<think>") and text.count("</think>") == 1 and "<|block_start|>" not in text
    recovered = recover(text)
    return not recovered.dropped and bool(recovered.trace.blocks)


def evaluate(
    model: Path,
    task: str,
    policy: EvictionPolicy,
    out: Path,
    problems: int,
    batch_size: int = 32,
    max_new_tokens: int = 1024,
    plain: bool = False,
) -> Scores:
    """Score the model folder `model` on the first `problems` held-out problems of toy task `task` under `policy`
    (greedy), its run written afresh into `out` (a model retrained in place must not reuse old records)."""
    settings = EvalSettings(str(model), f"toy:{task}", max_new_tokens=max_new_tokens, policy=policy)
    shutil.rmtree(out, ignore_errors=True)
    summary = run.evaluate(settings, out, problems, batch_size, progress=False, save_every=problems)
    return score(summary, run.read_records(out), plain)
