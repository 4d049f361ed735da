"""Task accuracy, KV and speed of a model generating answers with the reference engine under one policy.

Every problem is generated greedily from its prompt alone; the answer counts when the last `\\boxed{...}` of the
completion equals the reference's. Proportions come with Wilson 95% intervals; a paired difference of two runs on
the same problems (e.g. restart vs normal eviction) with the Agresti-Min interval for paired proportions.
"""

from __future__ import annotations

import math
import re
import time
from typing import NamedTuple

import numpy as np

from memento.engine.generate import Generation, ReferenceEngine
from memento.engine.policy import EvictionPolicy
from memento.engine.sampling import Sampling
from memento.format import Trace, recover

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
Z95 = 1.959964


def boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text`, or None."""
    found = BOXED.findall(text)
    return found[-1].strip() if found else None


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


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


class Difference(NamedTuple):
    """a - b on the same problems: accuracy difference and its 95% interval (paired)."""

    delta: float
    ci: tuple[float, float]
    only_a: int
    only_b: int


def paired_difference(a: list[bool], b: list[bool]) -> Difference:
    """Agresti-Min interval: the Wald interval of the paired 2x2 table with 0.5 added to each cell, so that it does
    not collapse to a point when no problem is solved by only one of the two (clipped to [-1, 1])."""
    n = len(a)
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    b_, c_, n_ = only_a + 0.5, only_b + 0.5, n + 2
    centre = (b_ - c_) / n_
    se = math.sqrt(b_ + c_ - (b_ - c_) ** 2 / n_) / n_
    ci = (max(-1.0, centre - Z95 * se), min(1.0, centre + Z95 * se))
    return Difference((only_a - only_b) / n, ci, only_a, only_b)


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
        auc_ktok=float(np.mean([sum(s.kv_timeline[1:]) / 1000 for s in stats])),
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
