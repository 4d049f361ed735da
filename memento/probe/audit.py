"""`memento audit`: how much a "forgotten" block still leaks through memento KV, for any Memento model.

A passcode goes into one block of every trace; the traces run through the model with exactly the KV an engine
holds after eviction (`leakage.memento_features`); the paper's probe (an MLP with 512 and 256 hidden units and a
128 bottleneck, one 10-way head per digit) learns the passcode from each memento's KV on 80% of the traces and is
scored on the rest. The same under restart mode (strict forgetting) is the control: there no retained entry was
computed while the block was visible.

Traces, by source:
- `--traces FILE`: Memento traces (e.g. from `memento data build`, or the model's own generations saved as traces):
  the text "The passcode is 31415. " (5 random digits) is put first in the block, and traces of one problem stay on
  one side of the split. Memento lengths vary, so a memento's features are its tokens' mean K and V.
- the toy `digits` (`listed=0`): the block's own 5 random digits are the passcode, the paper's toy set-up (features:
  every memento token's K and V concatenated, the paper's; label-unique split).
- the toy `orbit`: a one-digit note in the block, which the task never uses (the demo's probe);
- the toy `orbit-states`: the round's own work, its states after each step but the last (the memento keeps only the
  last). Unlike a passcode they follow from the previous memento (its state, multiplier and offset), so the causal
  control can read them too: leakage is what the masked mementos hold beyond the control.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from memento.core.errors import MementoError
from memento.core.format import Trace
from memento.core.policy import EvictionPolicy, forget_pattern
from memento.core.precision import resolve
from memento.probe.leakage import PAPER_PROBE, Leakage, ProbeConfig, inject, leakage

TEMPLATE = "The passcode is {code}. "
DIGITS = 5


class Audit(NamedTuple):
    source: str
    model: str
    results: dict[str, Leakage]  # evict | restart
    n: int
    block: int  # 0-based
    forget: str | None = None  # the regex of mode "forget" (selective strict forgetting)
    delimiters: bool = True  # the policy's mask_delimiters
    cost: dict | None = None  # what restart costs on an eval task (`memento.eval.report.restart_cost`)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "model": self.model,
            "n_traces": self.n,
            "block": self.block + 1,
            "chance": 0.1,
            "forget": self.forget,
            "mask_delimiters": self.delimiters,
            "accuracy_cost": self.cost,
            **{mode: {"n_test": leak.n_test, "rows": leak.table()} for mode, leak in self.results.items()},
        }


def block_digits(traces: list[Trace], block: int) -> np.ndarray:
    """(N, digits) the digits of block `block` (0-based) of each trace: the labels when a block's text is digits."""
    return np.array([[int(c) for c in t.blocks[block].text] for t in traces])


def label_groups(labels: np.ndarray) -> list[str]:
    """Each row's label as a string: as `groups` of the probe's split, no label is on both sides (label-unique)."""
    return ["".join(map(str, row)) for row in labels]


def marked_traces(source: str, n: int, block: int, seed: int):
    """(traces, labels (N, digits), groups, pool, toy) for a toy name or a traces file."""
    rng = np.random.default_rng(seed)
    if source == "digits":
        from memento.synthetic.digits import digits_traces

        traces = digits_traces(n, seed=seed + 40_000, listed=0)
        if not 0 <= block < len(traces[0].blocks) - 1:
            raise MementoError(f"--block {block + 1}: the digits toy has blocks 1-{len(traces[0].blocks) - 1} to probe")
        labels = block_digits(traces, block)
        return traces, labels, label_groups(labels), "concat", True
    if source in ("orbit", "orbit-states"):
        from memento.synthetic.orbit import with_note
        from memento.synthetic.tasks import held_out

        plain = held_out("orbit", n, seed + 20_000, notes=0.0)
        if not 1 <= block < len(plain[0].blocks) - 1:
            raise MementoError(
                f"--block {block + 1}: orbit's passcode goes into a round before the last one, "
                f"blocks 2-{len(plain[0].blocks) - 1}"
            )
        if source == "orbit-states":  # the round's states after each step but the last (which the memento keeps)
            labels = np.array([[int(step[-1]) for step in t.blocks[block].text.split(" ")[1:-1]] for t in plain])
            return plain, labels, None, "mean", True
        labels = rng.integers(0, 10, (len(plain), 1))
        traces = [with_note(t, block, int(d)) for t, d in zip(plain, labels[:, 0], strict=True)]
        return traces, labels, None, "mean", True
    from memento.core.rows import iter_traces

    path = Path(source)
    if not path.exists():
        raise MementoError(f"--traces {path}: no such file (or give --task digits|orbit)")
    found = [t for t in iter_traces(path) if len(t.blocks) >= block + 2][:n]
    if len(found) < 20:
        raise MementoError(f"{path}: {len(found)} traces have at least {block + 2} blocks; the probe needs 20+")
    keep = min(len(t.blocks) for t in found)
    labels = rng.integers(0, 10, (len(found), DIGITS))
    traces = [
        inject(Trace(t.problem, t.blocks[:keep], t.answer), block, TEMPLATE.format(code="".join(map(str, code))))
        for t, code in zip(found, labels, strict=True)
    ]
    return traces, labels, None, "mean", False


def audit(
    folder,
    source: str = "digits",
    n: int = 2000,
    block: int = 1,
    seed: int = 0,
    mask_delimiters: bool | None = None,
    config: ProbeConfig = PAPER_PROBE,
    forget: str | None = None,
    precision: str = "auto",
    progress: bool = False,
) -> Audit:
    """The probe on a model folder for `source` (digits | orbit | a traces file), with normal eviction (keep 0) and
    with restart, and with selective strict forgetting of the blocks whose text matches the regex `forget` (mode
    "forget"). `mask_delimiters` defaults to the toy's policy (True) for toy tasks and to the paper's Qwen3 setting
    (False) for trace files. `precision` (auto | bf16 | fp32): the model's dtype for the forward that gives the KV
    (`memento.core.precision`: auto is bf16 only where the CPU or GPU runs it natively)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memento.core.chat import memento_ids

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise MementoError(f"--model {folder}: not a Hugging Face model folder")
    if block < 0:
        raise MementoError(f"--block {block + 1}: blocks count from 1")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    memento_ids(tokenizer)  # a clear error with the fix when the Memento tokens are missing
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve(precision, device).dtype
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    pattern = None if forget is None else forget_pattern(forget, "--forget")
    traces, labels, groups, pool, toy = marked_traces(source, n, block, seed)
    delimiters = toy if mask_delimiters is None else mask_delimiters
    config = replace(config, seed=seed)
    modes = {"evict": (False, None), "restart": (True, None)}
    if pattern is not None:
        flagged = [{i for i, b in enumerate(t.blocks) if pattern.search(b.text)} for t in traces]
        modes["forget"] = (False, flagged)
    results = {
        mode: leakage(
            model,
            tokenizer,
            traces,
            labels,
            EvictionPolicy(0, mask_delimiters=delimiters, restart=restart),
            block,
            config,
            groups,
            pool,
            forget=flagged,
            progress=f"KV, {mode}" if progress else None,
        )
        for mode, (restart, flagged) in modes.items()
    }
    return Audit(source, str(folder), results, len(traces), block, forget, delimiters)


def plot(result: Audit, path_layers: Path, path_distance: Path) -> tuple[Path, Path]:
    """Probe accuracy by layer (control, direct, masked +1; masked +1 under restart) and by distance (last layer)."""
    from memento.core.plots import pyplot, save

    plt = pyplot()
    evict, restart = result.results["evict"], result.results["restart"]
    b = evict.block
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    layers = np.arange(evict.accuracy.shape[0])
    lines = [(evict, b, "o-", f"direct (memento {b + 1})"), (evict, b + 1, "o-", f"masked +1 (memento {b + 2})")]
    if b > 0:
        lines.append((evict, b - 1, "o-", f"causal control (memento {b})"))
    lines.append((restart, b + 1, "s--", "masked +1, restart"))
    if "forget" in result.results:
        lines.append((result.results["forget"], b + 1, "^:", f"masked +1, forget /{result.forget}/"))
    for leak, m, style, label in lines:
        ax.plot(layers + 1, 100 * leak.accuracy[:, m], style, label=label)
    ax.axhline(100 * evict.chance, color="grey", lw=1, ls=":", label="chance")
    ax.set(xlabel="layer", ylabel="probe accuracy (%)", title=f"Passcode in block {b + 1}, read from memento KV")
    ax.set_xticks(layers + 1)
    ax.legend(fontsize=8)
    first = save(fig, path_layers)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    distances = np.arange(evict.accuracy.shape[1] - b)
    for leak, style, label in ((evict, "o-", "eviction"), (restart, "s--", "restart mode")):
        ax.plot(distances, 100 * leak.accuracy[-1, b:], style, label=f"last layer, {label}")
    ax.axhline(100 * evict.chance, color="grey", lw=1, ls=":", label="chance")
    ax.set_xticks(distances, ["direct"] + [f"+{d}" for d in distances[1:]])
    ax.set(xlabel="memento, blocks after the passcode's block", ylabel="probe accuracy (%)", title="By distance")
    ax.legend(fontsize=8)
    return first, save(fig, path_distance)


def write(result: Audit, out: Path) -> Path:
    """audit.json, audit_layers.png, audit_distance.png and audit.md into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    (out / "audit.json").write_text(json.dumps(data, indent=1))
    plot(result, out / "audit_layers.png", out / "audit_distance.png")
    evict = result.results["evict"]
    b, last = result.block, evict.accuracy.shape[0] - 1
    names = {"evict": "eviction", "restart": "restart (strict forgetting)", "forget": f"forget /{result.forget}/"}
    modes = list(result.results.values())
    titles = [names[mode] for mode in result.results]

    def cell(leak: Leakage, layer: int, m: int) -> str:
        lo, hi = leak.ci(layer, m)
        return f"{100 * leak.accuracy[layer, m]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    lines = [
        f"# Memento KV leakage audit: {Path(result.model).name}",
        "",
        f"Source: {result.source}; {result.n} traces, passcode in block {b + 1}; probe scored on "
        f"{evict.n_test} held-out digit predictions per cell (95% Wilson intervals); chance 10%.",
        "",
        "## Last layer, by memento",
        "",
        "| memento | role | " + " | ".join(titles) + " |",
        "|---|---|" + "---|" * len(titles),
    ]
    for m in range(evict.accuracy.shape[1]):
        lines.append(f"| {m + 1} | {evict.role(m)} | " + " | ".join(cell(leak, last, m) for leak in modes) + " |")
    lines += ["", "## Masked +1 by layer", "", "| layer | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    if b + 1 < evict.accuracy.shape[1]:
        for layer in range(evict.accuracy.shape[0]):
            lines.append(f"| {layer + 1} | " + " | ".join(cell(leak, layer, b + 1) for leak in modes) + " |")
    if result.cost is not None:
        c = result.cost
        report = Path(c["report"])
        link = report.relative_to(out) if report.is_relative_to(out) else report

        def acc(name: str) -> str:
            lo, hi = c[name]["pass@1_ci95"]
            return f"{100 * c[name]['pass@1']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

        lines += [
            "",
            f"## What strict forgetting costs: {c['task']}, {c['problems']} problems, greedy",
            "",
            "| decoding | pass@1 | mean peak KV (tokens) |",
            "|---|---|---|",
            *(f"| {name} | {acc(name)} | {c[name]['peak_kv_tokens']:.0f} |" for name in ("evict", "restart")),
        ]
        if "restart_minus_evict" in c:
            d = c["restart_minus_evict"]
            lo, hi = d["ci95"]
            lines += [
                "",
                f"Restart minus eviction: {100 * d['pass@1']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] (paired).",
            ]
        lines += ["", f"The runs: [{link}]({link})."]
    lines += ["", "![by layer](audit_layers.png)", "![by distance](audit_distance.png)", ""]
    path = out / "audit.md"
    path.write_text("\n".join(lines))
    return path
