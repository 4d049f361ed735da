"""The science commands: `memento demo` (the toy world end to end) and `memento audit` (the leakage probe as a tool).

Thin like every command: parse, call the library, print.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from memento.cli.app import app, err, out, progress, user_errors


@app.command()
@user_errors
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where to write report.md, results.json and the plots.")
    ] = Path("demo-out"),
    full: Annotated[
        bool,
        typer.Option("--full", help="Train every variant at full size first (tens of minutes) and report on them."),
    ] = False,
    ship: Annotated[
        bool, typer.Option("--ship", help="With --full: make the trained models the shipped checkpoints.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the training runs; scored and probed problems are fixed.")] = 0,
):
    """The paper's findings on a toy world: KV savings, curriculum, restart ablation and the leakage probe.

    Runs every stage live at reduced size, then scores and probes the checkpoints shipped with memento (trained by
    `memento demo --full`); writes report.md, results.json and PNG plots to --out.
    """
    from memento.core.errors import MementoError
    from memento.toy import demo as toy

    if ship and not full:
        raise MementoError("--ship needs --full (it ships the models that run trains)")
    started = time.perf_counter()
    with err.status("memento demo") as status:

        def phase(text: str) -> None:
            elapsed = int(time.perf_counter() - started)
            err.print(f"[dim]{elapsed // 60}:{elapsed % 60:02d}[/dim] {escape(text)}")
            status.update(escape(text))

        result = toy.run(out_dir, full=full, seed=seed, ship=ship, phase=phase)
    headline(result.results)
    out.print(f"report: {result.report}   ({result.seconds / 60:.1f} min)")


@app.command()
@user_errors
def experiment(
    name: Annotated[str, typer.Argument(help="control | stage1 | curriculum | stage2-total | stage2-only")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the model and <NAME>.json go.")] = Path("experiments"),
    size: Annotated[
        str,
        typer.Option(help="live (minutes), full (the shipped models' size, tens of minutes) or tiny (a smoke test)"),
    ] = "live",
    seed: Annotated[int, typer.Option(help="Seed of the training run.")] = 0,
):
    """One toy experiment: train a model variant with the real trainer, score it with the reference engine.

    Scores on new problems with full attention, with eviction and (Memento variants) in restart mode: accuracy with
    95% intervals, peak KV, KV AUC and tokens/s. Run again with the same options: the finished model is reused.
    """
    from memento.core.errors import MementoError
    from memento.toy import demo as toy
    from memento.toy import report
    from memento.toy.experiments import BY_NAME, accuracy, train_variants

    if name not in BY_NAME:
        raise MementoError(f"experiment {name!r}: choose one of {', '.join(BY_NAME)}")
    if size not in ("live", "full", "tiny"):
        raise MementoError(f"--size {size}: choose live, full or tiny")
    chosen = toy.SIZES[size]
    folders = train_variants(toy.TASK, chosen, out_dir, seed, names=[name], progress=progress())
    scores = accuracy(folders, toy.TASK, chosen, out_dir / "eval", restart_for=() if BY_NAME[name].plain else (name,))
    rows = report.headline(scores)
    restart = scores[0].restart
    result = {
        "task": toy.TASK,
        "experiment": name,
        "size": size,
        "seed": seed,
        "model": str(folders[name]),
        "headline": rows,
        "restart_accuracy": None if restart is None else restart.accuracy,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    table(rows, f"toy task '{toy.TASK}', {size} size: {name} ({BY_NAME[name].about})")
    if restart is not None:
        out.print(f"restart mode: {100 * restart.accuracy:.1f}% (eviction {100 * scores[0].evict.accuracy:.1f}%)")
    out.print(f"model: {folders[name]}   results: {path}")


def table(rows: list[dict], title: str) -> None:
    grid = Table(title=title)
    for column in ("model", "acc. full attn", "acc. eviction", "peak KV", "vs Control", "tokens/s"):
        grid.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        grid.add_row(
            r["model"],
            "-" if r["accuracy_full"] is None else f"{100 * r['accuracy_full']:.1f}%",
            "-" if r["accuracy_evict"] is None else f"{100 * r['accuracy_evict']:.1f}%",
            f"{r['peak_kv_tokens']:.0f}",
            "-" if r["peak_vs_control"] is None else f"{r['peak_vs_control']:.2f}x",
            f"{r['tokens_per_s']:,.0f}",
        )
    out.print(grid)


def headline(results: dict) -> None:
    table(results["headline"], f"toy task '{results['task']}': {results['source']}")
    comp = results["comparisons"]
    if "memento vs control" in comp:
        d = comp["memento vs control"]["difference"]
        out.print(
            f"curriculum with eviction vs Control: {100 * d['delta']:+.1f} pp [{100 * d['ci'][0]:.1f}, "
            f"{100 * d['ci'][1]:.1f}]"
        )
    if "restart" in comp:
        d = comp["restart"]["difference"]
        out.print(
            f"restart (strict forgetting): {100 * d['delta']:+.1f} pp [{100 * d['ci'][0]:.1f}, "
            f"{100 * d['ci'][1]:.1f}] vs normal eviction"
        )
    rows = {
        row["role"]: row
        for row in results["probe"]["evict"]
        if row["layer"] == max(r["layer"] for r in results["probe"]["evict"])
    }
    restart = {
        row["role"]: row
        for row in results["probe"]["restart"]
        if row["layer"] == max(r["layer"] for r in results["probe"]["restart"])
    }
    out.print(
        "probe, last layer (chance 10%): "
        + ", ".join(f"{role} {100 * rows[role]['accuracy']:.1f}%" for role in ("causal control", "direct", "masked +1"))
        + f"; masked +1 under restart {100 * restart['masked +1']['accuracy']:.1f}%"
    )


@app.command()
@user_errors
def audit(
    model: Annotated[Path, typer.Option(help="A Hugging Face model folder with the Memento tokens.")],
    task: Annotated[
        str,
        typer.Option(
            help="Toy traces (unless --traces): digits (the paper's toy: the block's own digits), orbit (a "
            "passcode note) or orbit-states (the round's intermediate states)."
        ),
    ] = "digits",
    traces: Annotated[
        Path | None,
        typer.Option(help="Memento traces (JSONL/JSON/Parquet): a 5-digit passcode is written into the block."),
    ] = None,
    n: Annotated[int, typer.Option(help="How many traces (80% train the probe, the rest score it).")] = 2000,
    block: Annotated[int, typer.Option(help="The block (1-based) that holds the passcode.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the passcodes and the probe.")] = 0,
    mask_delimiters: Annotated[
        bool | None,
        typer.Option("--mask-delimiters/--keep-delimiters", help="Default: masked for toy tasks, kept for --traces."),
    ] = None,
    forget: Annotated[
        str | None,
        typer.Option(
            help="Also measure selective strict forgetting of the blocks whose text matches this regex "
            "(e.g. 'passcode'), as `memento generate --forget` serves them."
        ),
    ] = None,
    eval_task: Annotated[
        str | None,
        typer.Option(
            "--eval",
            help="Also measure what restart (strict forgetting) costs in accuracy on this `memento eval` task "
            "(e.g. toy:orbit, gym:basic_arithmetic), greedy, under eviction and under restart.",
        ),
    ] = None,
    eval_limit: Annotated[int, typer.Option(help="Problems of --eval.")] = 64,
    max_new_tokens: Annotated[int | None, typer.Option(help="--eval's token budget (default: the task's).")] = None,
    precision: Annotated[
        str, typer.Option(help="The model's dtype for the KV: auto (bf16 where it runs natively), bf16 or fp32.")
    ] = "auto",
    out_dir: Annotated[Path, typer.Option("--out", help="Where audit.md, audit.json and the plots go.")] = Path(
        "audit-out"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print every (layer, memento) result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Measure the ghost trace: how well the paper's MLP probe reads a passcode from memento KV once its block is
    evicted, next to restart mode (strict forgetting).

    Per layer and per memento: causal control (before the passcode's block: must be at chance), direct, and masked
    +1, +2, ... (any signal above chance is leakage). Writes audit.md, audit.json and two plots to --out.
    """
    from memento.cli import options
    from memento.eval.report import restart_cost
    from memento.probe.audit import audit as run_audit
    from memento.probe.audit import write

    source = str(traces) if traces is not None else task
    if traces is None and task not in ("digits", "orbit", "orbit-states"):
        from memento.core.errors import MementoError

        raise MementoError(f"--task {task}: choose digits, orbit or orbit-states, or give --traces FILE")
    options.check(
        options.at_least("--eval-limit", eval_limit, 1), options.at_least("--max-new-tokens", max_new_tokens, 1)
    )
    bars = progress(quiet)
    if bars:
        err.print(f"probing {model} ({source}, {n} traces)")
    result = run_audit(
        model, source, n, block - 1, seed, mask_delimiters, forget=forget, precision=precision, progress=bars
    )
    if eval_task is not None:
        if bars:
            err.print(f"what restart costs on {eval_task} ({eval_limit} problems)")
        cost = restart_cost(model, result.delimiters, eval_task, out_dir / "eval", eval_limit, max_new_tokens, bars)
        result = result._replace(cost=cost)
    report = write(result, out_dir)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    for mode, leak in result.results.items():
        table = Table(title=f"{mode}: probe accuracy by layer and memento (held-out n = {leak.n_test}, chance 10%)")
        table.add_column("layer")
        for m in range(leak.accuracy.shape[1]):
            table.add_column(f"m{m + 1}\n{leak.role(m)}", justify="right")
        for layer in range(leak.accuracy.shape[0]):
            table.add_row(str(layer + 1), *(f"{100 * a:.1f}%" for a in leak.accuracy[layer]))
        out.print(table)
    out.print(f"report: {report}")


# `memento probe`, the name ../shared/DESIGN.md's CLI contract gives the leakage probe: the same command as audit
app.command("probe", help="The leakage probe (the same command as `memento audit`).")(audit)
