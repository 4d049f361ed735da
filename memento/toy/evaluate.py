"""Task accuracy, KV and speed of a model generating answers with the reference engine under one policy.

Every problem is generated greedily from its prompt alone; the answer counts when the last `\\boxed{...}` of the
completion equals the reference's. Proportions come with Wilson 95% intervals (`memento.core.intervals`, which also has
the paired difference of two runs on the same problems).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from memento.core.format import Trace, recover
from memento.core.intervals import wilson
from memento.core.kv import auc_ktok
from memento.core.policy import EvictionPolicy
from memento.engine.generate import Generation, ReferenceEngine
from memento.engine.sampling import Sampling
from memento.eval.check import last_boxed

boxed = last_boxed  # the one \\boxed{} parser (memento.eval.check): the last closed box, nested braces kept


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

    def summary(self) -> dict:
        out = self._asdict()
        del out["correct"]
        return out


def score(traces: list[Trace], generations: list[Generation], seconds: float, plain: bool = False) -> Scores:
    correct = [
        boxed(g.text) is not None and boxed(g.text) == boxed(t.answer) for t, g in zip(traces, generations, strict=True)
    ]
    formed = [_well_formed(g.text, plain) for g in generations]
    stats = [g.stats for g in generations]
    hits = sum(correct)
    return Scores(
        n=len(traces),
        correct=correct,
        accuracy=hits / len(traces),
        ci=wilson(hits, len(traces)),
        well_formed=float(np.mean(formed)),
        peak_kv_tokens=float(np.mean([s.peak_kv_tokens for s in stats])),
        auc_ktok=float(np.mean([auc_ktok(s.kv_timeline[1:]) for s in stats])),
        generated_tokens=float(np.mean([s.generated_tokens for s in stats])),
        tokens_per_s=sum(s.generated_tokens for s in stats) / max(seconds, 1e-9),
    )


def _well_formed(text: str, plain: bool) -> bool:
    text = text.removesuffix("<|im_end|>")
    if plain:
        return text.startswith("<think>") and text.count("</think>") == 1 and "<|block_start|>" not in text
    recovered = recover(text)
    return not recovered.dropped and bool(recovered.trace.blocks)


def evaluate(
    model,
    tokenizer,
    traces: list[Trace],
    policy: EvictionPolicy,
    batch_size: int = 32,
    max_new_tokens: int = 1024,
    plain: bool = False,
) -> Scores:
    """Generate an answer to every trace's problem under `policy` (greedy) and score it against the trace."""
    if not traces:
        raise ValueError("evaluate needs at least one problem")
    engine = ReferenceEngine(model, tokenizer, policy)
    start = time.perf_counter()
    generations = engine.generate(
        [t.problem for t in traces], Sampling(max_new_tokens=max_new_tokens), batch_size=batch_size
    )
    return score(traces, generations, time.perf_counter() - start, plain)
