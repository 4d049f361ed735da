"""Orbit: the toy task on which Memento's KV savings are real and its mementos are needed.

The prompt gives a map on the digits, f(x) = 3x + k mod 10 (a permutation), and a start x; the reasoning restates
the problem in a first block, then applies f `rounds x steps` times, showing its work: "4>2+H>9" is 3*4 = 12 -> 2,
then 2 + 7 = 9 (k = 7 is written H: A = 0, B = 1, ..., J = 9). Each later block is one round of lettered steps; its
memento keeps what the next round needs (the round, k and the state); the answer is the final state:

    prompt    f:3x+H x=4
    block 1   f:3x+H x=4                                                memento  0:H4
    block 2   1:H a4>2+H>9 b9>7+H>4 c4>2+H>9 d9>7+H>4 e4>2+H>9 f9>7+H>4   memento  1:H4
    block 3   2:H a4>2+H>9 ...                                          memento  2:H...
    ...       (9 rounds)
    answer    \\boxed{4}

Why this shape:
- Every token depends on a few tokens at fixed distances before it (the state on the line before, k two tokens
  back, the memento just before the block), which a 4-layer model learns in minutes on a CPU. Designs that made it
  fetch something from the prompt over a growing distance (pointers through a lookup table; k only in the prompt or
  only in a block's header) had not learned to after 400-800 steps: a model this small prefers copying what it
  saw nearby, and content retrieval at a distance forms slowly. The restating block gives the first round the same
  context as every later one (a memento just before it); k is a letter so that it is unlike any digit.
- Blocks are ~8x longer than mementos and the prompt is short, so evicting blocks cuts peak KV by >3x against
  plain chain of thought.
- Under eviction, the state and the round survive only in the mementos: a model that does not write and read them
  fails.

`notes`: the share of traces with a note "p<digit>" after the header of a random round, a detail the reasoning
never needs (real traces are full of them). The leakage probe writes one into block 2 (`with_note`) and asks
whether later mementos' KV still holds its digit after block 2 was evicted.

The Control format of the same traces (plain chain of thought) is `format.render_plain`.
"""

from __future__ import annotations

import random
import string

from memento.format import Block, Trace

STEPS = string.ascii_lowercase
OFFSETS = "ABCDEFGHIJ"
MULTIPLIER = 3


def orbit_problem(rng: random.Random, rounds: int, steps: int, notes: float) -> Trace:
    k, x = rng.randrange(10), rng.randrange(10)
    letter = OFFSETS[k]
    problem = f"f:{MULTIPLIER}x+{letter} x={x}"
    blocks = [Block(problem, f"0:{letter}{x}")]
    note_at = rng.randrange(1, rounds + 1) if rng.random() < notes else -1
    for r in range(1, rounds + 1):
        parts = [f"{r}:{letter}"] + ([f"p{rng.randrange(10)}"] if r == note_at else [])
        for s in range(steps):
            product = MULTIPLIER * x % 10
            parts.append(f"{STEPS[s]}{x}>{product}+{letter}>{(product + k) % 10}")
            x = (product + k) % 10
        blocks.append(Block(" ".join(parts), f"{r}:{letter}{x}"))
    return Trace(problem, blocks, f"\\boxed{{{x}}}")


def orbit_traces(n: int = 1000, seed: int = 0, rounds: int = 9, steps: int = 6, notes: float = 0.5) -> list[Trace]:
    if not 1 <= rounds <= 9 or not 1 <= steps <= len(STEPS) or not 0 <= notes <= 1:
        raise ValueError("rounds must be 1-9, steps 1-26 and notes in [0, 1]")
    rng = random.Random(seed)
    return [orbit_problem(rng, rounds, steps, notes) for _ in range(n)]


def with_note(trace: Trace, block: int, digit: int) -> Trace:
    """`trace` with the note "p<digit>" in block `block` (0-based, a round: >= 1) and no other note (the probe's
    passcode)."""
    if not 1 <= block < len(trace.blocks):
        raise ValueError(f"block {block}: notes go into rounds, blocks 1-{len(trace.blocks) - 1}")
    blocks = [trace.blocks[0]]
    for i, b in enumerate(trace.blocks[1:], 1):
        head, *rest = b.text.split(" ")
        rest = [p for p in rest if not (len(p) == 2 and p[0] == "p")]
        blocks.append(Block(" ".join([head, *([f"p{digit}"] if i == block else []), *rest]), b.memento))
    return Trace(trace.problem, blocks, trace.answer)
