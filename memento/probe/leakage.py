"""The leakage probe: does a memento's KV still hold what its erased block said? (the paper's "ghost trace")

Protocol (after the paper's): a passcode digit is written into block `b` of every trace; each trace is run through
the model with exactly the KV an engine would hold; for every layer and every memento j, the memento's keys and
values (mean over its tokens) are the features, and an MLP probe learns the digit on a training split and is scored
on held-out traces of other problems (chance: 1/10).

- memento b is *direct*: its KV was computed while block b was still visible;
- mementos b+1, b+2, ... are *masked*: their own blocks never saw block b, so a probe above chance there reads a
  trace that crossed into them through memento b's KV (the ghost trace), at distance +1, +2, ...;
- memento b-1 is the *causal control*: computed before block b existed, it must be at chance (a check of the probe).

Restart mode (strict forgetting) recomputes each memento's KV without its block, so after eviction no retained
entry was computed while the block was visible: every probe from memento b on should fall to chance, unless the
memento *text* carries the digit.

The KV comes from one forward under the stage-2 mask (the restart mask in restart mode) with `use_cache=True`:
by the invariant of tests/test_invariant.py that is, entry for entry, what the reference engine holds for the
surviving tokens (memento KV is never evicted), and it is one batched forward instead of token-by-token decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from memento.core.errors import MementoError
from memento.core.format import Trace
from memento.core.intervals import wilson
from memento.core.policy import EvictionPolicy
from memento.core.spans import Kind
from memento.train.dataset import Collator, build_examples
from memento.train.masks import model_mask

MEMENTO_KINDS = (Kind.SUMMARY_START, Kind.SUMMARY, Kind.SUMMARY_END)


@torch.no_grad()
def memento_features(model, tokenizer, traces: list[Trace], policy: EvictionPolicy, batch_size: int = 32):
    """(N, layers, mementos, 2 x kv_heads x head_dim) float32: per trace, layer and memento, the mean K and V of
    the memento's tokens as the engine holds them under `policy`. Every trace needs the same number of blocks."""
    examples, _ = build_examples(traces, tokenizer, max_length=10**9)
    blocks = {e.spans.n_blocks for e in examples}
    if len(blocks) != 1:
        raise MementoError(f"the probe needs traces with the same number of blocks, got {sorted(blocks)}")
    n_mementos = blocks.pop()
    collate = Collator(tokenizer.pad_token_id or 0, policy)
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk)
        redo = batch["redo"].to(device) if "redo" in batch else None
        mask = model_mask(model, batch["schedule"].to(device), batch["pad"].to(device), policy.restart, redo)
        result = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            position_ids=batch["position_ids"].to(device),
            use_cache=True,
        )
        kv = [torch.cat([layer.keys, layer.values], dim=1) for layer in result.past_key_values.layers]  # (B, 2H, T, D)
        kinds, block = batch["kind"], torch.full_like(batch["kind"], -1)
        for row, e in enumerate(chunk):
            block[row, : len(e)] = torch.from_numpy(e.spans.block.astype(np.int64))
        is_memento = torch.isin(kinds, torch.tensor([int(k) for k in MEMENTO_KINDS]))
        # (B, M, T) weights averaging each memento's tokens
        weights = torch.stack([(is_memento & (block == j)).float() for j in range(n_mementos)], dim=1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(device)
        per_layer = [torch.einsum("bmt,bhtd->bmhd", weights, layer.float()).flatten(2) for layer in kv]
        out.append(torch.stack(per_layer, dim=1).cpu())  # (B, L, M, F)
    return torch.cat(out).numpy()


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    hidden: int = 128
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-2
    train_fraction: float = 0.7
    seed: int = 0


def split(n: int, fraction: float, seed: int, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, test): a random `fraction` of the rows for training, or, given `groups` (one hashable per
    row), a random `fraction` of the groups, so rows of one group (e.g. one problem) never sit on both sides."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        cut = round(fraction * n)
        return torch.from_numpy(order[:cut]), torch.from_numpy(order[cut:])
    ids = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    picked = rng.permutation(ids.max() + 1)[: round(fraction * (ids.max() + 1))]
    in_train = np.isin(ids, picked)
    return torch.from_numpy(np.flatnonzero(in_train)), torch.from_numpy(np.flatnonzero(~in_train))


def fit_probes(features: np.ndarray, labels: np.ndarray, config: ProbeConfig = ProbeConfig(), groups=None):
    """An MLP probe per feature group, scored on held-out rows. `features`: (N, G..., F); `labels`: (N,) ints;
    `groups`: optional (N,) row groups (the problem) kept on one side of the train/test split (see `split`).

    All groups train at once as one batched MLP (F -> hidden -> classes), full batch, AdamW; features standardised
    with the training split's statistics. Returns ((G...,) correct counts on the test split, test split size).
    """
    n, groups_shape, f = features.shape[0], features.shape[1:-1], features.shape[-1]
    x = torch.from_numpy(features.reshape(n, -1, f)).float().transpose(0, 1)  # (G, N, F)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    train, test = split(n, config.train_fraction, config.seed, groups)
    if len(train) == 0 or len(test) == 0:
        raise MementoError(f"the probe needs rows on both sides of its train/test split, got {n} rows")
    mean, std = x[:, train].mean(1, keepdim=True), x[:, train].std(1, keepdim=True) + 1e-6
    x = (x - mean) / std
    g, classes = x.shape[0], int(y.max()) + 1
    torch.manual_seed(config.seed)
    w1 = torch.nn.Parameter(torch.randn(g, f, config.hidden) / f**0.5)
    b1 = torch.nn.Parameter(torch.zeros(g, 1, config.hidden))
    w2 = torch.nn.Parameter(torch.randn(g, config.hidden, classes) / config.hidden**0.5)
    b2 = torch.nn.Parameter(torch.zeros(g, 1, classes))
    params = [w1, b1, w2, b2]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def logits(rows):
        return torch.nn.functional.gelu(x[:, rows] @ w1 + b1) @ w2 + b2  # (G, n, classes)

    target = y[train].expand(g, -1)
    for _ in range(config.epochs):
        loss = torch.nn.functional.cross_entropy(logits(train).flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        correct = (logits(test).argmax(-1) == y[test]).sum(-1)
    return correct.numpy().reshape(groups_shape), len(test)


class Leakage(NamedTuple):
    """Probe accuracy per layer and memento (0-based indices), for one policy; `block`: where the digit was."""

    block: int
    accuracy: np.ndarray  # (layers, mementos)
    correct: np.ndarray  # (layers, mementos)
    n_test: int
    chance: float

    def ci(self, layer: int, memento: int) -> tuple[float, float]:
        return wilson(int(self.correct[layer, memento]), self.n_test)

    def role(self, memento: int) -> str:
        if memento < self.block:
            return "causal control"
        return "direct" if memento == self.block else f"masked +{memento - self.block}"

    def table(self) -> list[dict]:
        """One row per (layer, memento): the numbers a report prints."""
        rows = []
        for layer in range(self.accuracy.shape[0]):
            for m in range(self.accuracy.shape[1]):
                lo, hi = self.ci(layer, m)
                rows.append(
                    {
                        "layer": layer + 1,
                        "memento": m + 1,
                        "role": self.role(m),
                        "accuracy": float(self.accuracy[layer, m]),
                        "ci": [lo, hi],
                    }
                )
        return rows


def leakage(
    model,
    tokenizer,
    traces: list[Trace],
    digits: list[int],
    policy: EvictionPolicy,
    block: int = 1,
    config: ProbeConfig = ProbeConfig(),
) -> Leakage:
    """Probe every layer and memento of `traces` (whose block `block` holds the passcode digit `digits[i]`). Traces
    of one problem stay on one side of the probe's train/test split: a probe cannot score by recognising a problem
    it was trained on with the same digit."""
    longest = max(len(t.problem) + len(t.response) for t in traces)  # characters: a bound on tokens
    batch = 32 if longest <= 1024 else max(1, 32 * 1024**2 // longest**2)  # the dense mask is (B, 1, T, T)
    features = memento_features(model, tokenizer, traces, policy, batch)
    correct, n_test = fit_probes(features, np.asarray(digits), config, groups=[t.problem for t in traces])
    return Leakage(block, correct / n_test, correct, n_test, 1 / 10)


def inject(trace: Trace, block: int, text: str) -> Trace:
    """`trace` with `text` put first in block `block` (0-based): the passcode for traces of any origin."""
    from memento.core.format import Block

    blocks = [Block(text + b.text, b.memento) if i == block else b for i, b in enumerate(trace.blocks)]
    return Trace(trace.problem, blocks, trace.answer)


def probe_model(
    folder,
    task: str = "orbit",
    traces=None,
    n: int = 2000,
    block: int = 1,
    template: str = "The passcode is {digit}. ",
    seed: int = 0,
    mask_delimiters: bool | None = None,
) -> dict[str, Leakage]:
    """The probe on a model folder, with normal eviction and with restart: {"evict": Leakage, "restart": Leakage}.

    Traces: `n` traces of held-out problems of toy `task` with the passcode as the task's own note, or the Memento
    traces in the file `traces` with `template` put first in block `block`, all cut to the same number of blocks
    (the fewest any of them has, and at least block + 2; shorter traces are left out). `mask_delimiters` defaults
    to the toy's policy (True) for toy tasks and to the paper's Qwen3 setting (False) for trace files.
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memento.core.chat import memento_ids

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise MementoError(f"--model {folder}: not a Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    memento_ids(tokenizer)  # a clear error with the fix when the Memento tokens are missing
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    if traces is None:
        from memento.synthetic.orbit import with_note
        from memento.synthetic.tasks import held_out

        if task != "orbit":
            raise MementoError(f"--task {task}: the passcode note is defined for the orbit task; use --traces FILE")
        marked_from = held_out(task, n, seed + 20_000, notes=0.0)
        if not 1 <= block < len(marked_from[0].blocks) - 1:
            raise MementoError(
                f"--block {block + 1}: orbit's passcode goes into a round before the last one, "
                f"blocks 2-{len(marked_from[0].blocks) - 1}"
            )
        digits = rng.integers(0, 10, len(marked_from)).tolist()
        marked = [with_note(t, block, d) for t, d in zip(marked_from, digits, strict=True)]
        toy = True
    else:
        from memento.core.rows import iter_traces

        found = [t for t in iter_traces(Path(traces)) if len(t.blocks) >= block + 2][:n]
        if len(found) < 20:
            raise MementoError(f"{traces}: {len(found)} traces have at least {block + 2} blocks; the probe needs 20+")
        keep = min(len(t.blocks) for t in found)
        digits = rng.integers(0, 10, len(found)).tolist()
        marked = [
            inject(Trace(t.problem, t.blocks[:keep], t.answer), block, template.format(digit=d))
            for t, d in zip(found, digits, strict=True)
        ]
        toy = False
    delimiters = toy if mask_delimiters is None else mask_delimiters
    config = ProbeConfig(seed=seed)
    policies = {
        mode: EvictionPolicy(0, mask_delimiters=delimiters, restart=r)
        for mode, r in (("evict", False), ("restart", True))
    }
    return {mode: leakage(model, tokenizer, marked, digits, policy, block, config) for mode, policy in policies.items()}
