"""The ghost trace on the paper's toy, measured as the paper measured it (its App. A.4.2 and Figure 13).

The model (`recipes/toy-digits.yaml`) writes 10 blocks of 5 random digits, each followed by the 3-digit running sum
as its memento, and is trained with block masking (keep 0). The digits exist only in their block (`listed=0`), so
once block 2 is evicted, anything a later memento's KV still knows of block 2's digits crossed through KV computed
while block 2 was visible: memento 2 (*direct*), mementos 3, 4, ... (*masked* +1, +2, ...: their own blocks never
saw block 2) and memento 1 (*causal control*: computed before block 2 existed, at chance by construction).

The probe is the paper's: features are the keys and values of every memento token concatenated, per layer; an MLP
with 512 and 256 hidden units and a 128-unit bottleneck reads the 5 digits of block 2 (one 10-way head each,
accuracy averaged over the digits, chance 10%), trained on 80% of the traces and scored on the rest, split so that
no 5-digit label is on both sides (the paper's label-unique split). Restart mode (strict forgetting) is the
control that should bring every memento from block 2 on to chance.

Task accuracy (the x-axis of the paper's third panel) forces held-out block digits and lets the model write every
memento and the answer greedily with eviction; by tests/test_invariant.py a forward under the Memento mask is what
decoding with physical eviction computes, so this runs as one masked forward per generated token.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from memento.core.spans import Kind
from memento.probe.audit import block_digits, label_groups
from memento.probe.leakage import PAPER_PROBE, Leakage, ProbeConfig, leakage, memento_features, probe
from memento.synthetic.digits import digits_traces
from memento.toy.experiments import EVICT, RESTART, load
from memento.train.dataset import Collator, build_examples
from memento.train.masks import model_mask

log = logging.getLogger(__name__)

BLOCK = 1  # block 2, 0-based: where the paper put its passcode
MEMENTOS = list(range(9))  # causal control (memento 1), direct (2), masked +1 ... +7 (3 ... 9)
PROBE_SEED, SCORE_SEED = 40_000, 50_000  # training used seed 0: fresh random digits either way
RECIPE = "recipes/toy-digits.yaml"
SHIPPED = Path(__file__).parent / "checkpoints"  # digits (the final model) and digits-step* (along training)

# Per-digit accuracy of the best guess of 5 random digits from their sum alone: what the memento text (the running
# sums) allows any probe, with or without a ghost trace. Enumerated over the 10^5 blocks (`text_ceiling`).
TEXT_CEILING = 0.1603

PAPER = {  # Figure 13 of the paper, its toy (../shared/notes/paper-facts.md)
    "masked +1, last layer": (24.9, 26.2),
    "masked +1, first layer": 13.1,
    "masked +2, last layer": 21.4,
    "masked +7": "1.3x chance (13%)",
    "masked along training": "flat 17-19% while task accuracy rises 77% -> 95%",
}


def text_ceiling(digits: int = 5) -> float:
    """The best per-digit accuracy from the digits' sum alone (each digit guessed as the likeliest given the sum)."""
    import itertools
    from collections import Counter, defaultdict

    first = defaultdict(Counter)
    for block in itertools.product(range(10), repeat=digits):
        first[sum(block)][block[0]] += 1
    return sum(max(c.values()) for c in first.values()) / 10**digits


def traces(n: int, seed: int) -> list:
    return digits_traces(n, seed=seed, listed=0)


@torch.no_grad()
def write_greedy(model, tokenizer, batch: list, policy=EVICT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The traces of `batch` (one length) with every memento digit and answer token replaced by the model's greedy
    choice under eviction (block digits and delimiters forced): (written ids, true ids, token kinds), (B, T) each."""
    examples, _ = build_examples(batch, tokenizer, max_length=10**9)
    if len({len(e) for e in examples}) != 1:
        raise ValueError("write_greedy needs traces of one length (the digits task has)")
    b = Collator(tokenizer.pad_token_id or 0, policy)(examples)
    kinds = b["kind"]
    written = torch.nonzero((kinds[0] == int(Kind.SUMMARY)) | (kinds[0] == int(Kind.ANSWER))).flatten().tolist()
    mask = model_mask(model, b["schedule"], b["pad"], policy.restart, b.get("redo"))
    ids = b["input_ids"].clone()
    for p in written:
        logits = model(input_ids=ids[:, :p], attention_mask=mask[:, :, :p, :p], position_ids=b["position_ids"][:, :p])
        ids[:, p] = logits.logits[:, -1].argmax(-1)
    return ids, b["input_ids"], kinds


def task_accuracy(model, tokenizer, batch: list, policy=EVICT, batch_size: int = 128) -> dict:
    """Block digits forced, every memento digit and answer token written greedily by the model with eviction
    (`write_greedy`). Returns answer accuracy, all-mementos exact match and per-memento-digit accuracy."""
    answers = mementos = digits = digit_total = 0
    for start in range(0, len(batch), batch_size):
        ids, truth, kinds = write_greedy(model, tokenizer, batch[start : start + batch_size], policy)
        right = ids == truth
        summary, answer = kinds[0] == int(Kind.SUMMARY), kinds[0] == int(Kind.ANSWER)
        answers += int(right[:, answer].all(-1).sum())
        mementos += int(right[:, summary].all(-1).sum())
        digits += int(right[:, summary].sum())
        digit_total += int(summary.sum()) * len(ids)
    n = len(batch)
    return {"answer": answers / n, "mementos": mementos / n, "memento_digits": digits / digit_total, "n": n}


def leak(model, tokenizer, batch: list, policy, config: ProbeConfig = PAPER_PROBE, mementos=MEMENTOS) -> Leakage:
    """The paper's probe of block `BLOCK`'s 5 digits at every layer and at `mementos` (0-based, from memento 1)."""
    labels = block_digits(batch, BLOCK)
    return leakage(model, tokenizer, batch, labels, policy, BLOCK, config, label_groups(labels), "concat", mementos)


def checkpoint_step(folder: Path) -> int:
    found = re.search(r"(\d+)", folder.name)
    return int(found.group(1)) if found else -1


def run(
    final: Path,
    along: list[Path],
    n: int = 8_000,
    n_along: int = 3_000,
    n_score: int = 256,
    config: ProbeConfig = PAPER_PROBE,
) -> dict:
    """Figure 13 on the model in `final`, and the leakage along training on the checkpoints `along`."""
    started = time.perf_counter()
    probe_set, score_set = traces(n, PROBE_SEED), traces(n_score, SCORE_SEED)
    model, tokenizer = load(final)
    results: dict = {"model": str(final), "n_probe": n, "n_along": n_along, "probe": {}, "paper": PAPER}
    results["probe_config"] = {"hidden": list(config.hidden), "epochs": config.epochs, "lr": config.lr}
    results["accuracy"] = task_accuracy(model, tokenizer, score_set)
    log.info("final model: %s", results["accuracy"])
    for mode, policy in (("evict", EVICT), ("restart", RESTART)):
        leakage = leak(model, tokenizer, probe_set, policy, config)
        results["probe"][mode] = {"n_test": leakage.n_test, "rows": leakage.table()}
        log.info("%s: last layer %s", mode, np.round(100 * leakage.accuracy[-1], 1))
    results["along"] = []
    for folder in sorted(along, key=checkpoint_step):
        model, tokenizer = load(folder)
        accuracy = task_accuracy(model, tokenizer, score_set)
        leakage = leak(model, tokenizer, probe_set[:n_along], EVICT, config, mementos=[0, 1, 2])
        results["along"].append(
            {"step": checkpoint_step(folder), "accuracy": accuracy, "n_test": leakage.n_test, "rows": leakage.table()}
        )
        log.info("step %d: %s, masked +1 %s", checkpoint_step(folder), accuracy, leakage.accuracy[:, 2])
    results["seconds"] = time.perf_counter() - started
    return results


def by_size(final: Path, sizes: list[int], config: ProbeConfig = PAPER_PROBE) -> dict:
    """The probe at the last layer on more and more traces, up to the paper's 50K: does a weak masked trace only
    need more data to show? Memento 1-3 (control, direct, masked +1), eviction and restart, each size a prefix of
    the same traces (features computed once per mode)."""
    model, tokenizer = load(final)
    last = model.config.num_hidden_layers - 1
    batch = traces(max(sizes), PROBE_SEED)
    labels = block_digits(batch, BLOCK)
    out = {"model": str(final), "layer": last + 1, "sizes": sizes, "probe": {}}
    for mode, policy in (("evict", EVICT), ("restart", RESTART)):
        features = memento_features(model, tokenizer, batch, policy, 256, "concat", [0, 1, 2], [last])
        out["probe"][mode] = []
        for n in sizes:
            leak = probe(features[:n], labels[:n], BLOCK, config, label_groups(labels[:n]))
            out["probe"][mode].append({"n": n, "n_test": leak.n_test, "rows": leak.table()})
            log.info("%s, %d traces: %s", mode, n, np.round(100 * leak.accuracy[0], 1))
    return out


def _rows(rows: list[dict], role: str) -> list[dict]:
    return sorted((r for r in rows if r["role"] == role), key=lambda r: r["layer"])


def plot(results: dict, path: Path) -> Path:
    """Figure 13's three panels, ours with 95% intervals and the paper's toy numbers as grey marks."""
    from memento.core.plots import pyplot, save

    plt = pyplot()
    fig, (by_layer, by_distance, along) = plt.subplots(1, 3, figsize=(14, 4.2))
    evict, restart = results["probe"]["evict"]["rows"], results["probe"]["restart"]["rows"]
    last = max(r["layer"] for r in evict)

    def line(ax, rows, x, label, **style):
        y = [100 * r["accuracy"] for r in rows]
        low = [100 * (r["accuracy"] - r["ci"][0]) for r in rows]
        high = [100 * (r["ci"][1] - r["accuracy"]) for r in rows]
        ax.errorbar(x, y, yerr=[low, high], capsize=3, marker="o", label=label, **style)

    for role, style in (("direct", {}), ("masked +1", {}), ("causal control", {})):
        rows = _rows(evict, role)
        line(by_layer, rows, [r["layer"] for r in rows], role, **style)
    rows = _rows(restart, "masked +1")
    line(by_layer, rows, [r["layer"] for r in rows], "masked +1, restart", linestyle="--")
    by_layer.plot([1, last], [13.1, 25.55], "s", color="grey", label="paper's toy, masked +1")
    by_layer.set(xlabel="layer", ylabel="probe accuracy, 5 digits averaged (%)", title="by layer")
    by_layer.set_xticks(range(1, last + 1))

    distance = [r for r in evict if r["layer"] == last and r["role"].startswith("masked")]
    distance.sort(key=lambda r: int(r["role"].split("+")[1]))
    line(by_distance, distance, [int(r["role"].split("+")[1]) for r in distance], "masked, last layer")
    gone = [r for r in restart if r["layer"] == last and r["role"].startswith("masked")]
    gone.sort(key=lambda r: int(r["role"].split("+")[1]))
    line(by_distance, gone, [int(r["role"].split("+")[1]) for r in gone], "restart", linestyle="--")
    by_distance.plot([1, 2, 7], [25.55, 21.4, 13.0], "s", color="grey", label="paper's toy")
    by_distance.set(xlabel="blocks between the memento and block 2", title=f"by distance (layer {last})")

    points = results["along"]
    x = [100 * p["accuracy"]["answer"] for p in points]
    for role in ("direct", "masked +1"):
        rows = [next(r for r in p["rows"] if r["layer"] == last and r["role"] == role) for p in points]
        line(along, rows, x, role)
    for p, xi in zip(points, x, strict=True):
        along.annotate(str(p["step"]), (xi, 100 * _rows(p["rows"], "masked +1")[-1]["accuracy"]), fontsize=7)
    along.fill_between([77, 95], 17, 19, color="grey", alpha=0.3, label="paper's toy (masked)")
    along.set(xlabel="task accuracy with eviction (%)", title=f"along training (layer {last}; labels: step)")
    for ax, where in ((by_layer, "center left"), (by_distance, "upper right"), (along, "center right")):
        ax.axhline(10, color="black", linewidth=0.8, linestyle=":", label="chance")
        ax.legend(fontsize=7, loc=where)
    return save(fig, path, dpi=110)
