"""`stats.json` and `report.md` (with PNG histograms) of a pipeline run, rebuilt from its journal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from memento.core.plots import pyplot, save
from memento.data.judge import PASS


def _describe(values) -> dict:
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        "mean": round(float(values.mean()), 4),
        "median": round(float(np.median(values)), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
    }


def aggregate(records: list[dict], min_block_tokens: int = 0) -> dict:
    ok = [r["stats"] for r in records if "stats" in r]
    failures = Counter(r["error"]["kind"] for r in records if "error" in r)
    dropped = Counter(r["dropped"] for r in records if "dropped" in r)
    for s in ok:
        failures.update(s.get("failures", {}))
    per_block = [m / b for s in ok for b, m in zip(s["block_tokens"], s["memento_tokens"], strict=True) if b]
    per_trace = [sum(s["memento_tokens"]) / sum(s["block_tokens"]) for s in ok if sum(s["block_tokens"])]
    depth = max((len(s["judge_rounds"]) for s in ok), default=0)
    pass_rates, scores = [], []
    for r in range(depth):
        latest = [s["judge_rounds"][min(r, len(s["judge_rounds"]) - 1)] for s in ok]
        flat = [x for row in latest for x in row]
        scores.append(_describe(flat))
        pass_rates.append(round(float(np.mean([x >= PASS for x in flat])), 4) if flat else None)
    return {
        "traces": len(records),
        "succeeded": len(ok),
        "failed": sum(1 for r in records if "error" in r),
        "failures_by_kind": dict(sorted(failures.items())),
        "dropped": sum(dropped.values()),  # by the seed filters (the release's): no </think>, CJK text, too long
        "dropped_by_reason": dict(sorted(dropped.items())),
        "units_raw_per_trace": _describe([s["units_raw"] for s in ok]),
        "units_per_trace": _describe([s["units"] for s in ok]),
        "boundaries_raw_per_trace": _describe([s["units_raw"] - 1 for s in ok]),
        "boundaries_per_trace": _describe([s["units"] - 1 for s in ok]),
        "blocks_per_trace": _describe([s["blocks"] for s in ok]),
        # A trace whose reasoning is shorter than the smallest block cannot be cut: it stays one (short) block.
        "short_traces": sum(1 for s in ok if min(s["block_tokens"], default=0) < min_block_tokens),
        "block_tokens": _describe([t for s in ok for t in s["block_tokens"]]),
        "memento_tokens": _describe([t for s in ok for t in s["memento_tokens"]]),
        "compression_per_block": _describe(per_block),
        "compression_per_trace": _describe(per_trace),
        "judge_score_per_round": scores,
        "judge_pass_rate_per_round": pass_rates,
        "llm": {
            k: sum(s.get("llm", {}).get(k, 0) for s in ok)
            for k in ("calls", "cached", "retries", "repairs", "tokens", "cost")
        },
    }


def readable(counts: dict) -> str:
    """`{'no </think>': 1, 'CJK text': 2}` as `no </think>: 1, CJK text: 2`."""
    return ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in counts.items())


def short_note(n: int, min_block_tokens: int) -> str:
    """Why `n` blocks are under the minimum: segmentation never makes one, a trace too short to cut stays whole."""
    return (
        f"{n} trace(s) had under {min_block_tokens} tokens of reasoning (min_block_tokens): too short to cut, "
        "each is one block below the minimum"
    )


def write_report(out: Path, records: list[dict], config, counted_with: str) -> dict:
    stats = aggregate(records, config.min_block_tokens) | {"token_counter": counted_with}
    (out / "stats.json").write_text(json.dumps({"config": config.identity(), **stats}, indent=1) + "\n")
    ok = [r["stats"] for r in records if "stats" in r]
    plots = _plots(out, ok)
    lines = [
        "# Memento data build report",
        "",
        f"{stats['succeeded']} of {stats['traces']} traces built ({stats['failed']} failed"
        + (f": {readable(stats['failures_by_kind'])}" if stats["failures_by_kind"] else "")
        + (
            f"; {stats['dropped']} left out by the seed filters: {readable(stats['dropped_by_reason'])}"
            if stats["dropped"]
            else ""
        )
        + f"), backend `{config.backend}`, tokens counted with `{counted_with}`.",
        "",
        *([short_note(stats["short_traces"], config.min_block_tokens) + ".", ""] if stats["short_traces"] else []),
        "| measure | mean | median | min | max |",
        "|---|---|---|---|---|",
    ]
    for key in (
        "units_raw_per_trace",
        "units_per_trace",
        "blocks_per_trace",
        "block_tokens",
        "memento_tokens",
        "compression_per_block",
        "compression_per_trace",
    ):
        d = stats[key]
        if d["n"]:
            lines.append(f"| {key.replace('_', ' ')} | {d['mean']:g} | {d['median']:g} | {d['min']:g} | {d['max']:g} |")
    lines += [
        "",
        "Candidate boundaries per trace: "
        f"{stats['boundaries_raw_per_trace'].get('mean', 0):.1f} before merging, "
        f"{stats['boundaries_per_trace'].get('mean', 0):.1f} after (the paper: ~397 -> ~187).",
        "",
    ]
    lines += ["| judge round | mean score | pass rate (>= 8) |", "|---|---|---|"]
    for r, (score, rate) in enumerate(
        zip(stats["judge_score_per_round"], stats["judge_pass_rate_per_round"], strict=True)
    ):
        label = "initial" if r == 0 else f"after revision {r}"
        lines.append(f"| {label} | {score.get('mean', 0):.2f} | {rate if rate is not None else 0:.1%} |")
    llm = stats["llm"]
    lines += [
        "",
        f"LLM: {llm['calls']} calls, {llm['cached']} answered from the cache, {llm['retries']} retries, "
        f"{llm['repairs']} repaired replies, {llm['tokens']} tokens, cost {llm['cost']:.4g}.",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += _view(out, records, counted_with)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return stats


def _view(out: Path, records: list[dict], counted_with: str, listed: int = 10) -> list[str]:
    """Write `view.html` (the built traces in the trace viewer) and the report's lines that link to it: the
    mementos that still fail the judge, lowest score first."""
    from memento.view import items, page

    made = [
        it for r in records if (it := items.item(r, f"{out / 'journal.jsonl'}: trace {r['id']}", None, counted_with))
    ]
    if not made:
        return []
    made = items.unique(made)
    page.write(made[: page.REPORT_LIMIT], out / "view.html", "memento data build")
    held = "" if len(made) <= page.REPORT_LIMIT else f" (the first {page.REPORT_LIMIT} of {len(made)})"
    failing = sorted(
        (v["score"], it.entry["id"], i, " ".join(v.get("feedback", "").split())[:160])
        for it in made[: page.REPORT_LIMIT]
        for i, block in enumerate(it.body["blocks"])
        for v in block.get("judge", [])
        if v.get("kept") and v["score"] < PASS
    )
    lines = ["", "## Traces", "", f"Every trace{held} in the trace viewer: [view.html](view.html)."]
    if failing:
        lines += [
            "",
            f"Mementos that fail the judge after the last round (lowest first, {min(listed, len(failing))} "
            f"of {len(failing)}):",
            "",
        ]
        lines += [
            f"- [{key}]({page.link('view.html', key)}), memento {i + 1}: {score:g}/10" + (f": {note}" if note else "")
            for score, key, i, note in failing[:listed]
        ]
    return lines


def _plots(out: Path, ok: list[dict]) -> list[Path]:
    if not ok:
        return []
    # title: (x axis, y axis, {legend label: values}); one series needs no legend
    panels = {
        "units per trace": (
            "units",
            "traces",
            {"raw (before merging)": [s["units_raw"] for s in ok], "merged": [s["units"] for s in ok]},
        ),
        "blocks per trace": ("blocks", "traces", {"": [s["blocks"] for s in ok]}),
        "block tokens": ("tokens", "blocks", {"": [t for s in ok for t in s["block_tokens"]]}),
        "memento tokens": ("tokens", "mementos", {"": [t for s in ok for t in s["memento_tokens"]]}),
        "compression per block": (
            "memento tokens / block tokens",
            "blocks",
            {"": [m / b for s in ok for b, m in zip(s["block_tokens"], s["memento_tokens"], strict=True) if b]},
        ),
        "judge score, last round": (
            "score (pass >= 8)",
            "mementos",
            {"": [x for s in ok for x in s["judge_rounds"][-1]]},
        ),
    }
    fig, axes = pyplot().subplots(2, 3, figsize=(12, 6.5), dpi=100)
    for ax, (title, (xlabel, ylabel, series)) in zip(axes.flat, panels.items(), strict=True):
        bins = np.histogram_bin_edges(np.concatenate([np.asarray(v, dtype=float) for v in series.values()]), 20)
        for label, values in series.items():  # shared bins: raw and merged compare bar for bar
            ax.hist(values, bins=bins, alpha=0.7, label=label or None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return [save(fig, out / "histograms.png")]
