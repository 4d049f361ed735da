"""The paper's toy task (App. A.4.2): blocks of random digits, running sums as mementos.

The prompt lists `blocks` groups of `digits` random digits; block i copies group i, memento i is the running sum of
all digits so far, zero-padded to 3 digits, and the answer is the final sum:

    prompt   31415 92653 58979 ...          (10 groups of 5)
    block 1  31415      memento 1  014
    block 2  92653      memento 2  039
    ...
    answer   \\boxed{215}

Kept for comparison with the paper's numbers. Its blocks are barely longer than its mementos: with the demo's
policy (keep 0, block delimiters evicted) eviction cuts peak KV by ~34% against the same trace decoded without
eviction (~21% with the delimiters kept), and by nothing against plain chain of thought (the mementos cost what
the blocks saved). The sums are the hard part for a tiny model
(../shared/notes/toy-feasibility.md). `orbit.py` is the task built to show the savings.
"""

from __future__ import annotations

import random

from memento.core.format import Block, Trace


def digits_traces(n: int = 1000, seed: int = 0, blocks: int = 10, digits: int = 5) -> list[Trace]:
    if not 1 <= blocks * digits * 9 <= 999:
        raise ValueError("the running sum must fit in 3 digits: blocks x digits x 9 <= 999")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        groups = ["".join(str(rng.randrange(10)) for _ in range(digits)) for _ in range(blocks)]
        total, parts = 0, []
        for group in groups:
            total += sum(map(int, group))
            parts.append(Block(group, f"{total:03d}"))
        out.append(Trace(" ".join(groups), parts, f"\\boxed{{{total}}}"))
    return out
