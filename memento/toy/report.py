"""The demo's report: `report.md`, `results.json` and the PNG plots, from the experiments' results.

The numbers the paper reports for its own toy and models are printed beside ours (../shared/notes/paper-facts.md:
arXiv 2604.09852). Plots: the KV sawtooth of one problem (Control vs Memento, as generated), accuracy with 95%
intervals, probe accuracy by layer and by distance from the erased block, and the training curves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memento.core.plots import pyplot, save
from memento.toy import experiments
from memento.toy.experiments import BY_NAME, Accuracy, restart_effect

PAPER = {
    "restart": "-15.3 pp (Qwen3-8B, AIME24: 66.1% -> 50.8%)",
    "probe": "toy: masked 24.9-26.2% at the last layer vs 13.1% at the first, 21.4% two blocks away, 1.3x chance "
    "seven blocks away (chance 10%); Qwen3-8B: direct 65.2%, masked 26.7%, causal control 10.8%",
    "kv": "2-3x lower peak KV on competition math (Qwen3-8B: 2.71 -> 1.08 GB)",
}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def interval(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def headline(results: list[Accuracy]) -> list[dict]:
    """One row per model: accuracy with full attention and with eviction, its KV, and KV vs the Control."""
    control = next((r for r in results if r.name == "control"), None)
    rows = []
    for r in results:
        main = r.full if r.evict is None else r.evict
        rows.append(
            {
                "model": r.name,
                "training": BY_NAME[r.name].about if r.name in BY_NAME else "",
                "accuracy_full": r.full.accuracy if r.full else None,
                "accuracy_evict": r.evict.accuracy if r.evict else None,
                "ci_evict": r.evict.ci if r.evict else None,
                "ci_full": r.full.ci if r.full else None,
                "peak_kv_tokens": main.peak_kv_tokens,
                "auc_ktok": main.auc_ktok,
                "peak_vs_control": control.full.peak_kv_tokens / main.peak_kv_tokens if control else None,
                "auc_vs_control": control.full.auc_ktok / main.auc_ktok if control and main.auc_ktok else None,
                "tokens_per_s": main.tokens_per_s,
                "well_formed": main.well_formed,
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | training | accuracy, full attention | accuracy, eviction | peak KV (tokens) | peak KV vs Control "
        "| KV AUC vs Control | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        full = "-" if r["accuracy_full"] is None else f"{pct(r['accuracy_full'])} {interval(r['ci_full'])}"
        evict = "-" if r["accuracy_evict"] is None else f"{pct(r['accuracy_evict'])} {interval(r['ci_evict'])}"
        ratio = "-" if r["peak_vs_control"] is None else f"{r['peak_vs_control']:.2f}x lower"
        auc = "-" if r["auc_vs_control"] is None else f"{r['auc_vs_control']:.2f}x lower"
        lines.append(
            f"| {r['model']} | {r['training']} | {full} | {evict} | {r['peak_kv_tokens']:.0f} | {ratio} "
            f"| {auc} | {r['tokens_per_s']:,.0f} |"
        )
    return lines


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    x = np.arange(len(rows))
    for offset, key, ci, label in (
        (-0.2, "accuracy_full", "ci_full", "full attention"),
        (0.2, "accuracy_evict", "ci_evict", "eviction"),
    ):
        have = [i for i, r in enumerate(rows) if r[key] is not None]
        values = [100 * rows[i][key] for i in have]
        err = [
            [100 * (rows[i][key] - rows[i][ci][0]) for i in have],
            [100 * (rows[i][ci][1] - rows[i][key]) for i in have],
        ]
        ax.bar(x[have] + offset, values, 0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_ylabel("task accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.set_title("Accuracy by model and decoding (95% intervals)")
    return save(fig, path)


def plot_probe(leak: dict, path_layers: Path, path_distance: Path) -> tuple[Path, Path]:
    from memento.probe.audit import Audit, plot

    return plot(Audit("orbit", "", leak, 0, leak["evict"].block), path_layers, path_distance)


def plot_sawtooth(timelines: dict[str, list[int]], path: Path) -> Path:
    """KV tokens held while generating one problem, per model/decoding (`timelines`: label -> KV timeline)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    for label, timeline in timelines.items():
        ax.plot(np.arange(len(timeline) - 1), timeline[1:], label=f"{label} (peak {max(timeline)})")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("KV entries held (tokens)")
    ax.set_title("KV cache during generation of one problem")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return save(fig, path)


def plot_curves(logs: dict[str, Path], path: Path) -> Path:
    """Training loss over optimizer steps per variant (from each run's log.jsonl)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    for name, log in logs.items():
        if not log.exists():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines()]
        steps = [r["global_step"] for r in records if "loss" in r]
        losses = [r["loss"] for r in records if "loss" in r]
        ax.plot(steps, losses, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training curves (the curriculum switches to block masking half-way)")
    ax.legend(fontsize=8)
    return save(fig, path)


def comparisons(results: list[Accuracy]) -> dict:
    """The curriculum with eviction vs the Control; curriculum vs stage-2-only at equal total and equal stage-2
    compute; restart vs eviction. All paired over the same problems."""
    by = {r.name: r for r in results}
    out = {}
    cur = by.get("curriculum")
    if cur and "control" in by:
        control = by["control"].full
        difference = experiments.difference(cur.evict, control)._asdict()
        out["memento vs control"] = {
            "curriculum": cur.evict.accuracy,
            "control": control.accuracy,
            "difference": difference,
        }
    for other, label in (("stage2-total", "equal total compute"), ("stage2-only", "equal stage-2 compute")):
        if cur and other in by:
            difference = experiments.difference(cur.evict, by[other].evict)._asdict()
            out[label] = {"curriculum": cur.evict.accuracy, other: by[other].evict.accuracy, "difference": difference}
    if cur and cur.restart is not None:
        out["restart"] = {
            "evict": cur.evict.accuracy,
            "restart": cur.restart.accuracy,
            "difference": restart_effect(cur)._asdict(),
            "modes": ["strict", "release"],  # the same tokens recomputed under the toy's policy (see the report)
        }
    return out


def memento_vs_control(comp: dict) -> list[str]:
    if "memento vs control" not in comp:
        return []
    c = comp["memento vs control"]
    d = c["difference"]
    return [
        f"Curriculum model with eviction vs the Control (full attention), same problems: {pct(c['curriculum'])} vs "
        f"{pct(c['control'])}, {100 * d['delta']:+.1f} pp {interval(d['ci'])}.",
        "",
    ]


def write(out: Path, results: dict, leak: dict, plots: dict[str, Path]) -> Path:
    """report.md in `out`: what ran, the headline table, the comparisons, the probe, the plots, the paper's numbers."""
    rows = results["headline"]
    comp = results["comparisons"]
    evict, restart = leak["evict"], leak["restart"]
    b = evict.block
    lines = [
        "# memento demo: the paper's findings on a toy world",
        "",
        f"Task `{results['task']}` (memento/synthetic/orbit.py): 9 rounds of 6 steps of x -> a*x + k_r mod 10, the "
        "offset drifting each round; a block per round, its memento the round, multiplier, next offset, drift and "
        "state. Tiny Llama (4 layers, d=128, character tokenizer, ~0.9M parameters); eviction policy keep 0 with "
        "block delimiters evicted.",
        f"Models: {results['source']}. Scored on {results['size']['problems']} problems never trained on, greedy, "
        "with the reference engine (physical KV eviction). Intervals are 95% (Wilson; paired differences: "
        "Agresti-Min).",
        "",
        "## Headline",
        "",
        *markdown_table(rows),
        "",
        *memento_vs_control(comp),
        f"![accuracy]({plots['accuracy'].name}) ![kv]({plots['kv'].name})",
        "",
        "## Curriculum (stage 1 -> stage 2) vs stage 2 only",
        "",
    ]
    for label in ("equal total compute", "equal stage-2 compute"):
        if label in comp:
            c = comp[label]
            other = next(k for k in c if k not in ("curriculum", "difference"))
            d = c["difference"]
            lines.append(
                f"- {label}: curriculum {pct(c['curriculum'])} vs {other} {pct(c[other])} with eviction: "
                f"difference {100 * d['delta']:+.1f} pp {interval(d['ci'])}."
            )
    lines += ["", f"![curves]({plots['curves'].name})", "", "## Restart mode (strict forgetting)", ""]
    if "restart" in comp:
        c = comp["restart"]
        d = c["difference"]
        lines.append(
            f"Curriculum model: eviction {pct(c['evict'])}, restart {pct(c['restart'])}: "
            f"{100 * d['delta']:+.1f} pp {interval(d['ci'])} (paper: {PAPER['restart']})."
        )
        lines.append(
            "Both restart modes give this number: strict (ours: every token fed after the block is recomputed) and "
            "release (the paper's release: the delimiters always leave with the block, the newest memento is "
            "recomputed) recompute exactly the same tokens when keep 0 evicts the delimiters, as the toy does "
            "(`tests/test_invariant.py::test_the_two_restart_modes_coincide_with_keep0_and_the_delimiters_evicted`). "
            "They differ when the delimiters stay (Qwen3, OLMo-3) or with keep N > 0."
        )
    last = evict.accuracy.shape[0] - 1
    lines += [
        "",
        "## The ghost trace: leakage probe",
        "",
        f"A passcode digit is written into block {b + 1} of {results['size']['probe_traces']} new traces; an MLP "
        f"probe reads it from each memento's KV (held-out n = {evict.n_test}, chance 10%).",
        "",
        "| layer | causal control (memento 1) | direct (memento 2) | masked (memento 3) | masked, restart mode |",
        "|---|---|---|---|---|",
    ]
    for layer in range(evict.accuracy.shape[0]):
        cells = [(evict, b - 1), (evict, b), (evict, b + 1), (restart, b + 1)]
        lines.append(
            f"| {layer + 1} | "
            + " | ".join(f"{pct(r.accuracy[layer, m])} {interval(r.ci(layer, m))}" for r, m in cells)
            + " |"
        )
    lines += [
        "",
        "By distance (last layer): "
        + ", ".join(
            f"{evict.role(m)} {pct(evict.accuracy[last, m])} {interval(evict.ci(last, m))}"
            for m in range(b, evict.accuracy.shape[1])
        )
        + ".",
        "Restart mode, same: "
        + ", ".join(
            f"{restart.role(m)} {pct(restart.accuracy[last, m])} {interval(restart.ci(last, m))}"
            for m in range(b, restart.accuracy.shape[1])
        )
        + ".",
        f"Paper: {PAPER['probe']}.",
        "",
        f"![probe by layer]({plots['probe_layers'].name}) ![probe by distance]({plots['probe_distance'].name})",
    ]
    if "live" in results:
        size = results["live_size"]
        lines += [
            "",
            "## Live run (every stage, reduced size, this machine)",
            "",
            f"The same five variants trained here with T = {size['steps']} steps of {size['batch']} traces, scored on "
            f"{size['problems']} problems: the pipeline works end to end; the numbers are not meant to be good."
            + live_step(results.get("live_step")),
            "",
            *markdown_table(results["live"]),
        ]
    lines += ["", f"Total time: {results['seconds'] / 60:.1f} min. Paper's KV result: {PAPER['kv']}.", ""]
    if results.get("phases"):
        lines += ["| phase | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.0f} |" for name, seconds in results["phases"].items()] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def live_step(step: dict | None) -> str:
    """How the live run was sized: T comes from one timed optimizer step on this machine (`demo.live_size`)."""
    if not step:
        return ""
    return (
        f" T was sized to this machine: one step took {step['seconds']:.2f} s in {step['precision']} "
        f"({step['reason']})."
    )
