"""An RL run's report: `report.md` and `curves.png` from its `log.jsonl` and `summary.json` (as the paper's Figure 7
middle and right: training reward over steps, and what the blocks and the KV did meanwhile)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memento.core.plots import pyplot, save


def read_log(out: Path) -> tuple[list[dict], list[dict]]:
    """(training steps, evaluations) of a run folder's log."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "reward" in r], [r for r in records if "eval_accuracy" in r]


def smooth(values: list[float], window: int = 10) -> np.ndarray:
    """Trailing mean over up to `window` steps."""
    x = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(x)])
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def plot(out: Path) -> Path:
    steps, evals = read_log(out)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["step"] for r in steps]
    left.plot(x, [r["reward"] for r in steps], ".", alpha=0.3, color="C0", label="train reward (per step)")
    left.plot(x, smooth([r["reward"] for r in steps]), "-", color="C0", label="train reward (10-step mean)")
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "s-", color="C3", label="held-out")
    left.set_xlabel("RL step")
    left.set_ylabel("accuracy")
    left.legend(fontsize=8)
    right.plot(x, smooth([r["blocks_per_rollout"] for r in steps]), "-", color="C1", label="blocks per rollout")
    right.set_xlabel("RL step")
    right.set_ylabel("blocks per rollout")
    twin = right.twinx()
    twin.plot(x, smooth([r["block_length"] for r in steps]), "--", color="C2", label="block length (tokens)")
    twin.plot(x, smooth([r["kv_peak_mean"] for r in steps]), ":", color="C4", label="peak KV per rollout (tokens)")
    twin.set_ylabel("tokens")
    lines = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(lines, [line.get_label() for line in lines], fontsize=8)
    return save(fig, out / "curves.png")


def compare(runs: dict[str, Path], path: Path) -> Path:
    """Several runs' blocks over training, side by side (the block-cap comparison): blocks per rollout, block
    length, and the largest peak KV of a rollout, per step (10-step means)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, (name, out) in enumerate(runs.items()):
        steps, _ = read_log(Path(out))
        x = [r["step"] for r in steps]
        for ax, key in zip(axes, ("blocks_per_rollout", "block_length", "kv_peak_max"), strict=True):
            ax.plot(x, smooth([r[key] for r in steps]), "-", color=f"C{i}", label=name)
    for ax, label in zip(
        axes, ("blocks per rollout", "block length (tokens)", "largest peak KV (tokens)"), strict=True
    ):
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return save(fig, path)


def write(out: Path) -> Path:
    """Write `out/report.md` (and `curves.png`); return the report's path."""
    out = Path(out)
    steps, _ = read_log(out)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    figure = plot(out)
    first, last = steps[:10], steps[-10:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    lines = ["# RL run", ""]
    if "before" in summary:
        d = summary.get("difference") or {}
        ci = ", ".join(f"{100 * v:+.1f}" for v in d.get("ci", []))
        lines.append(
            f"Held-out accuracy (greedy, eviction): {100 * summary['before']:.1f}% before, "
            f"{100 * summary['after']:.1f}% after: {100 * d.get('delta', 0):+.1f} pp, paired 95% CI [{ci}] pp."
        )
        if summary.get("peak_kv_before") is not None:
            lines.append(
                f"Peak KV per held-out answer (tokens, mean): {summary['peak_kv_before']:.1f} before, "
                f"{summary['peak_kv_after']:.1f} after."
            )
        lines.append("")
    lines += [
        f"![curves]({figure.name})",
        "",
        "| | first 10 steps | last 10 steps |",
        "|---|---|---|",
    ]
    for key, label in (
        ("reward", "train reward"),
        ("blocks_per_rollout", "blocks per rollout"),
        ("block_length", "block length (tokens)"),
        ("kv_peak_mean", "peak KV per rollout (tokens)"),
        ("capped_blocks", "blocks ended by the cap, per rollout"),
        ("completion_tokens", "completion tokens"),
        ("kl", "KL to the reference"),
        ("clip_fraction", "clipped tokens"),
        ("mismatch_max", "train/inference mismatch (max abs. log-prob gap)"),
        ("seconds", "seconds per step"),
    ):
        if steps and key in steps[0]:
            lines.append(f"| {label} | {mean(first, key):.4g} | {mean(last, key):.4g} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
