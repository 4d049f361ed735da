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

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from memento.core.errors import MementoError
from memento.core.format import Trace
from memento.core.intervals import wilson
from memento.core.policy import EvictionPolicy
from memento.core.precision import resolve
from memento.core.spans import Kind
from memento.train.dataset import Collator, build_examples
from memento.train.masks import model_mask

MEMENTO_KINDS = (Kind.SUMMARY_START, Kind.SUMMARY, Kind.SUMMARY_END)
MASK_CELLS = 64 * 1024**2  # the most cells of the dense (B, 1, T, T) mask in one forward


@torch.no_grad()
def memento_features(
    model,
    tokenizer,
    traces: list[Trace],
    policy: EvictionPolicy,
    batch_size: int = 32,
    pool: str = "mean",
    mementos: list[int] | None = None,
    layers: list[int] | None = None,
    forget: list[set[int]] | None = None,
    progress: str | None = None,
):
    """(N, layers, mementos, F) float32: per trace, layer and memento (0-based; all, or those given), the K and V of
    the memento's tokens as the engine holds them under `policy`. Every trace needs the same number of blocks.

    `pool="mean"`: the mean K and V over the memento's tokens, F = 2 x kv_heads x head_dim (any memento length);
    `pool="concat"`: the paper's features, K and V of every memento token concatenated, F = tokens x 2 x kv_heads x
    head_dim (every memento j must have the same number of tokens in every trace). `forget`: per trace, the blocks
    (0-based) forgotten strictly (selective strict forgetting; the engines' `forget`).

    Traces run shortest first, at most `batch_size` at a time and fewer for long ones (the dense mask is
    (B, 1, T, T): B x T^2 stays under `MASK_CELLS`); the model runs in its own dtype (e.g. bf16), the features come
    back float32 in the traces' order. `progress`: a progress bar's label (None: no bar)."""
    if pool not in ("mean", "concat"):
        raise MementoError(f"pool must be mean or concat, got {pool!r}")
    examples, _ = build_examples(traces, tokenizer, max_length=10**9)
    blocks = {e.spans.n_blocks for e in examples}
    if len(blocks) != 1:
        raise MementoError(f"the probe needs traces with the same number of blocks, got {sorted(blocks)}")
    n_mementos = blocks.pop()
    chosen = list(range(n_mementos)) if mementos is None else list(mementos)
    collate = Collator(tokenizer.pad_token_id or 0, policy)
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    chunks, start = [], 0
    while start < len(order):
        longest = len(examples[order[min(start + batch_size, len(order)) - 1]])
        size = max(1, min(batch_size, MASK_CELLS // longest**2))
        chunks.append(order[start : start + size])
        start += size
    out = []
    from tqdm.auto import tqdm

    for rows in tqdm(chunks, desc=progress, disable=progress is None, unit="batch", dynamic_ncols=True):
        chunk = [examples[i] for i in rows]
        batch = collate(chunk) if forget is None else collate(chunk, forget=[forget[i] for i in rows])
        redo = batch["redo"].to(device) if "redo" in batch else None
        mask = model_mask(model, batch["schedule"].to(device), batch["pad"].to(device), policy.restart, redo)
        result = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            position_ids=batch["position_ids"].to(device),
            use_cache=True,
            logits_to_keep=1,  # no (B, T, vocab) logits: only the cache is read
        )
        kv = [torch.cat([layer.keys, layer.values], dim=1) for layer in result.past_key_values.layers]  # (B, 2H, T, D)
        if layers is not None:
            kv = [kv[i] for i in layers]
        kinds, block = batch["kind"], torch.full_like(batch["kind"], -1)
        for row, e in enumerate(chunk):
            block[row, : len(e)] = torch.from_numpy(e.spans.block.astype(np.int64))
        is_memento = torch.isin(kinds, torch.tensor([int(k) for k in MEMENTO_KINDS]))
        where = torch.stack([is_memento & (block == j) for j in chosen], dim=1)  # (B, M, T)
        if pool == "mean":
            weights = where.float()
            weights = (weights / weights.sum(-1, keepdim=True)).to(device)
            per_layer = [torch.einsum("bmt,bhtd->bmhd", weights, layer.float()).flatten(2) for layer in kv]
        else:
            counts = where.sum(-1)
            if not bool((counts == counts[:1]).all()):
                raise MementoError("pool=concat needs every memento to have the same number of tokens in every trace")
            t = torch.nonzero(where, as_tuple=True)[2].reshape(len(chunk), len(chosen), -1).to(device)  # (B, M, K)
            rows = torch.arange(len(chunk), device=device)[:, None, None]
            per_layer = [layer.float().transpose(1, 2)[rows, t].flatten(2) for layer in kv]  # (B, M, K x 2H x D)
        out.append(torch.stack(per_layer, dim=1).cpu())  # (B, L, M, F)
    features = torch.cat(out)[torch.from_numpy(np.argsort(np.concatenate(chunks)))]  # back to the traces' order
    return features.numpy()


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """An MLP probe: F -> hidden... -> digits x 10, AdamW, `epochs` over the training rows in batches of `batch_size`
    (None: full batch). The default is the demo's small probe; `PAPER_PROBE` is the paper's (512 x 256 + 128)."""

    hidden: tuple[int, ...] = (128,)
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-2
    train_fraction: float = 0.7
    seed: int = 0
    batch_size: int | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the CPU runs it natively)


PAPER_PROBE = ProbeConfig(
    hidden=(512, 256, 128), epochs=30, lr=1e-3, weight_decay=1e-2, train_fraction=0.8, batch_size=256, precision="auto"
)


def split(n: int, fraction: float, seed: int, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, test): a random `fraction` of the rows for training, or, given `groups` (one hashable per
    row), a random `fraction` of the groups, so rows of one group (e.g. one problem, or one label: the paper's
    label-unique split) never sit on both sides."""
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
    """An MLP probe per feature group, scored on held-out rows. `features`: (N, G..., F); `labels`: (N,) or (N, D)
    ints (D digits, one 10-way head each); `groups`: optional (N,) row groups kept on one side of the train/test
    split (see `split`).

    All groups train at once as one batched MLP; features standardised with the training split's statistics.
    Returns ((G...,) correct digit predictions on the test split, their number: test rows x D)."""
    n, groups_shape, f = features.shape[0], features.shape[1:-1], features.shape[-1]
    x = torch.from_numpy(features.reshape(n, -1, f)).float().transpose(0, 1)  # (G, N, F)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(n, -1))  # (N, D)
    digits = y.shape[1]
    train, test = split(n, config.train_fraction, config.seed, groups)
    if len(train) == 0 or len(test) == 0:
        raise MementoError(f"the probe needs rows on both sides of its train/test split, got {n} rows")
    mean, std = x[:, train].mean(1, keepdim=True), x[:, train].std(1, keepdim=True) + 1e-6
    x = (x - mean) / std
    g, classes = x.shape[0], int(y.max()) + 1
    torch.manual_seed(config.seed)
    sizes = [f, *config.hidden, digits * classes]
    weights = [torch.nn.Parameter(torch.randn(g, a, b) / a**0.5) for a, b in itertools.pairwise(sizes)]
    biases = [torch.nn.Parameter(torch.zeros(g, 1, b)) for b in sizes[1:]]
    optimizer = torch.optim.AdamW([*weights, *biases], lr=config.lr, weight_decay=config.weight_decay)

    def logits(rows):  # (G, n, D, classes)
        h = x[:, rows]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = h @ w + b
            if i < len(weights) - 1:
                h = torch.nn.functional.gelu(h)
        return h.unflatten(-1, (digits, classes))

    generator = torch.Generator().manual_seed(config.seed)
    batch = config.batch_size or len(train)
    low = resolve(config.precision, "cpu").precision == "bf16"
    for _ in range(config.epochs):
        order = train[torch.randperm(len(train), generator=generator)] if config.batch_size else train
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            target = y[rows].expand(g, -1, -1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                out = logits(rows)
            loss = torch.nn.functional.cross_entropy(out.float().flatten(0, 2), target.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        correct = (logits(test).argmax(-1) == y[test]).sum((-1, -2))
    return correct.numpy().reshape(groups_shape), len(test) * digits


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
    labels,
    policy: EvictionPolicy,
    block: int = 1,
    config: ProbeConfig = ProbeConfig(),
    groups=None,
    pool: str = "mean",
    mementos: list[int] | None = None,
    forget: list[set[int]] | None = None,
    layers: list[int] | None = None,
    progress: str | None = None,
) -> Leakage:
    """Probe every layer and memento (all, or `mementos`: 0-based, counted from memento 1) of `traces`, whose block
    `block` holds what `labels` say ((N,) or (N, digits) ints). `groups` (default: the problem) stay on one side of
    the probe's train/test split: a probe cannot score by recognising a problem it was trained on with its label.
    `forget`: per trace, the blocks forgotten strictly (selective strict forgetting); `layers`: 0-based, all if None
    (the result's rows are then these layers, in order); `progress`: a progress bar's label (None: no bar)."""
    features = memento_features(model, tokenizer, traces, policy, 64, pool, mementos, layers, forget, progress)
    return probe(features, labels, block, config, [t.problem for t in traces] if groups is None else groups)


def probe(features: np.ndarray, labels, block: int, config: ProbeConfig = ProbeConfig(), groups=None) -> Leakage:
    """The probes of `fit_probes` on `memento_features` (N, layers, mementos, F), as a `Leakage` for block `block`."""
    correct, n_test = fit_probes(features, np.asarray(labels), config, groups=groups)
    return Leakage(block, correct / n_test, correct, n_test, 1 / 10)


def inject(trace: Trace, block: int, text: str) -> Trace:
    """`trace` with `text` put first in block `block` (0-based): the passcode for traces of any origin."""
    from memento.core.format import Block

    blocks = [Block(text + b.text, b.memento) if i == block else b for i, b in enumerate(trace.blocks)]
    return Trace(trace.problem, blocks, trace.answer)
