"""A small synthetic Memento task in plain text: add a list of numbers, a few terms per block.

Each block works through some terms step by step ("12 + 7 = 19. 19 + 30 = 49."), its memento keeps only the running
total ("Total so far: 49."), and the answer is the final sum in \\boxed{}. Under block masking, the answer and each
new block can only get the total from the mementos, so the task rewards a model that writes and reads them. Plain
text, so any tokenizer works; used by the training tests and the CPU recipe (`toy:sums?n=400&seed=0`).
"""

from __future__ import annotations

import random

from memento.core.format import Block, Trace


def sums_traces(n: int = 400, seed: int = 0, blocks: tuple[int, int] = (2, 4), terms: int = 3) -> list[Trace]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(*blocks)
        numbers = [rng.randint(1, 50) for _ in range(k * terms)]
        total, parts = 0, []
        for b in range(k):
            steps = []
            for x in numbers[b * terms : (b + 1) * terms]:
                steps.append(f"{total} + {x} = {total + x}.")
                total += x
            parts.append(Block(" ".join(steps), f"Total so far: {total}."))
        problem = "Add these numbers: " + ", ".join(map(str, numbers)) + "."
        out.append(Trace(problem, parts, f"The sum is \\boxed{{{total}}}."))
    return out
