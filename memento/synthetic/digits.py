"""The paper's toy task (App. A.4.2): blocks of random digits, running sums as mementos.

Block i holds `digits` random digits, memento i is the running sum of all digits so far, zero-padded to 3 digits,
and the answer is the final sum. Two versions, by where the digits come from:

    listed=1 (our first reading)           listed=0 (the ghost-trace experiment's)
    prompt   31415 92653 58979 ...          prompt   sum 10x5
    block 1  31415      memento 1  014      block 1  31415      memento 1  014
    block 2  92653      memento 2  039      block 2  92653      memento 2  039
    ...                                     ...
    answer   \\boxed{215}                    answer   \\boxed{215}

With `listed=1` the prompt lists the groups and each block copies its group, so the task is a function of the
prompt. With `listed=0` the model writes the random digits itself: they exist only in their block, which is what a
leakage probe needs (a later memento can know them only through what crossed into memento KV while the block was
visible; with the digits in the prompt it could read them there, always visible). Scoring a `listed=0` model forces
the block digits of held-out traces and lets it write the mementos and the answer (`memento.toy.ghost`).

Its blocks are barely longer than its mementos: with the demo's policy (keep 0, block delimiters evicted) eviction
cuts peak KV by ~34% against the same trace decoded without eviction (~21% with the delimiters kept), and by
nothing against plain chain of thought (the mementos cost what the blocks saved). The sums are the hard part for a
tiny model (../shared/notes/toy-feasibility.md). `orbit.py` is the task built to show the savings.
"""

from __future__ import annotations

import random

from memento.core.format import Block, Trace


def digits_traces(n: int = 1000, seed: int = 0, blocks: int = 10, digits: int = 5, listed: int = 1) -> list[Trace]:
    if not 1 <= blocks * digits * 9 <= 999:
        raise ValueError("the running sum must fit in 3 digits: blocks x digits x 9 <= 999")
    if listed not in (0, 1):
        raise ValueError(f"listed must be 0 or 1, got {listed}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        groups = ["".join(str(rng.randrange(10)) for _ in range(digits)) for _ in range(blocks)]
        total, parts = 0, []
        for group in groups:
            total += sum(map(int, group))
            parts.append(Block(group, f"{total:03d}"))
        problem = " ".join(groups) if listed else f"sum {blocks}x{digits}"
        out.append(Trace(problem, parts, f"\\boxed{{{total}}}"))
    return out
