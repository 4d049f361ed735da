"""Orbit: the toy task on which Memento's KV savings are real and its mementos are needed.

A problem is a map on the digits that drifts from round to round, x -> a*x + k_r mod 10 with k_r = k + r*d, and a
start x. The reasoning restates the problem in a first block, then runs 9 rounds of 6 steps, showing its work: the
step "a4*3>2+H>9" is 4*3 = 12 -> 2, then 2 + 7 = 9 (offsets are letters, A = 0 ... J = 9). Each round's memento
keeps what the next round needs: the round, the multiplier, the next round's offset, the drift and the state. The
answer is the final state:

    prompt    f:3x+H d2 x=4                    (a = 3, k = 7, d = 2, x = 4)
    block 1   f:3x+H d2 x=4                                        memento  0:3J24   (next offset 7 + 2 = 9: J)
    block 2   1:3J2 a4*3>2+J>1 b1*3>3+J>2 c2*3>6+J>5 d5*3>5+J>4 e4*3>2+J>1 f1*3>3+J>2   memento  1:3B22
    block 3   2:3B2 a2*3>6+B>7 ...                                 memento  2:3D2...
    ...       (9 rounds)
    answer    \\boxed{...}

Design choices, and why:
- Every token depends on a few tokens at fixed distances before it (the state at the end of the previous step, the
  multiplier and offset copied step to step, the memento just before the block), which a 4-layer model learns in
  minutes on a CPU. Designs that made it fetch something from the prompt over a growing distance (pointers through a
  lookup table in the prompt; an offset stated only in the prompt or in a block's header) had not learned to after
  400-800 steps: a model this small prefers copying what is nearby, and content retrieval at a distance forms
  slowly. The restating block gives the first round the same context as every later one (a memento just before).
- The drift makes every round apply a different map, so the state does not cycle with a short period (with a fixed
  map mod 10 it repeats every <= 4 steps and the answer would be a simple function of the prompt), and it makes
  3,600 problems (a in 1, 3, 7, 9; k, x in 0-9; d in 1-9). A fixed 10% of them is never trained on: `split="test"`
  draws only from those, so every scored or probed problem is new to the model.
- Blocks are ~12x longer than mementos and the prompt is short, so evicting blocks cuts peak KV by ~3.6x against
  plain chain of thought. Under eviction, the round's offset and the state survive only in the mementos.

`notes`: the share of traces with a note "p<digit>" after the header of a random round, a detail the reasoning
never needs (real traces are full of them). The leakage probe writes one into the second block (0-based block 1,
the first round; `with_note`) and asks whether later mementos' KV still holds its digit once that block is evicted.

The Control format of the same traces (plain chain of thought) is `format.render_plain`.
"""

from __future__ import annotations

import itertools
import random
import string

from memento.core.format import Block, Trace

STEPS = string.ascii_lowercase
OFFSETS = "ABCDEFGHIJ"
MULTIPLIERS = (1, 3, 7, 9)
PROBLEMS = list(itertools.product(MULTIPLIERS, range(10), range(1, 10), range(10)))  # (a, k, d, x): 3,600
TEST = frozenset(random.Random(2604_09852).sample(PROBLEMS, len(PROBLEMS) // 10))  # held out from training


def orbit_trace(
    a: int, k: int, d: int, x: int, rng: random.Random, rounds: int, steps: int, notes: float, shown: bool = False
) -> Trace:
    problem = f"f:{a}x+{OFFSETS[k]} d{d} x={x}"

    def drift(k: int) -> tuple[str, int]:  # the next offset, and its sum written out as a last step when `shown`
        return (f" ={d}+{OFFSETS[k]}>{(k + d) % 10}" if shown else ""), (k + d) % 10

    work, k = drift(k)
    blocks = [Block(problem + work, f"0:{a}{OFFSETS[k]}{d}{x}")]
    note_at = rng.randrange(1, rounds + 1) if rng.random() < notes else -1
    for r in range(1, rounds + 1):
        letter = OFFSETS[k]
        parts = [f"{r}:{a}{letter}{d}"] + ([f"p{rng.randrange(10)}"] if r == note_at else [])
        for s in range(steps):
            product = a * x % 10
            parts.append(f"{STEPS[s]}{x}*{a}>{product}+{letter}>{(product + k) % 10}")
            x = (product + k) % 10
        work, k = drift(k)
        blocks.append(Block(" ".join(parts) + work, f"{r}:{a}{OFFSETS[k]}{d}{x}"))
    return Trace(problem, blocks, f"\\boxed{{{x}}}")


def orbit_traces(
    n: int = 1000,
    seed: int = 0,
    rounds: int = 9,
    steps: int = 6,
    notes: float = 0.5,
    split: str = "train",
    shown: int = 0,
) -> list[Trace]:
    """`n` traces of problems from the `train` problems (drawn with replacement) or the held-out `test` ones (in
    shuffled passes over all 360: no problem repeats before every one has come up). `shown=1`: each block ends with
    the drift's sum as a step (`=2+J>1`: d + offset -> the next offset's digit), the same digit + letter sum the
    steps do, so the memento copies the next offset instead of adding two inputs no single one of which tells it
    anything (a sum the 4-layer toy models do not learn: their next-offset letter stays at chance, 10%)."""
    if not 1 <= rounds <= 9 or not 1 <= steps <= len(STEPS) or not 0 <= notes <= 1:
        raise ValueError("rounds must be 1-9, steps 1-26 and notes in [0, 1]")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    pool = sorted(TEST) if split == "test" else [p for p in PROBLEMS if p not in TEST]
    rng = random.Random(seed)
    if split == "train":
        return [orbit_trace(*rng.choice(pool), rng, rounds, steps, notes, bool(shown)) for _ in range(n)]
    picks = [p for _ in range(-(-n // len(pool))) for p in rng.sample(pool, len(pool))][:n]
    return [orbit_trace(*p, rng, rounds, steps, notes, bool(shown)) for p in picks]


def with_note(trace: Trace, block: int, digit: int) -> Trace:
    """`trace` with the note "p<digit>" in block `block` (0-based; a round, so >= 1) and no other note."""
    if not 1 <= block < len(trace.blocks):
        raise ValueError(f"block {block}: notes go into rounds, blocks 1-{len(trace.blocks) - 1} (0-based)")
    blocks = [trace.blocks[0]]
    for i, b in enumerate(trace.blocks[1:], 1):
        head, *rest = b.text.split(" ")
        rest = [p for p in rest if not (len(p) == 2 and p[0] == "p")]
        blocks.append(Block(" ".join([head, *([f"p{digit}"] if i == block else []), *rest]), b.memento))
    return Trace(trace.problem, blocks, trace.answer)
