"""`memento eval`: accuracy and KV of models and policies on tasks (registered in `memento.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memento.cli import options
from memento.cli.app import app, out, progress, user_errors

TASKS = (
    "The paper's 14: aime24, aime25, aime26, hmmt_feb23, hmmt_feb24, hmmt_feb25, hmmt_feb26, hmmt_nov25, brumo25, "
    "smt25, cmimc25 (Comp. Math), math500, gpqa, lcb (all of release v6; lcb:FROM..TO a window); each from the "
    "Hub, or TASK:FILE for a local copy. Also champ, gym:GENERATOR, toy:orbit. Repeat for several."
)
PROTOCOL = (
    "paper: the paper's sampling (temperature 0.6, top-p 0.95, top-k 20), 32,000 new tokens, 64 samples on "
    "competition math and 2 elsewhere; quick: greedy, 1 sample, 4,096 tokens (smoke tests). Options given below "
    "override it and are reported as departures; none: the options alone."
)
RUN = (
    "Compare runs, instead of --model: NAME=MODEL, or NAME=MODEL?OPTION=VALUE&... with the options of "
    "the policy flags below: policy (full, keepN), restart, restart_mode, mask_delimiters, "
    "keep_last_block_for_answer (true or false), max_block_tokens, max_blocks. E.g. --run base=DIR?policy=full "
    "--run memento=DIR?policy=keep0&restart=true (quote it in a shell). Repeat; the first is the baseline."
)


@app.command("eval")
@user_errors
def evaluate(
    task: Annotated[list[str], typer.Option(help=TASKS, metavar="TASK")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: <run>/<task>/results.jsonl, report.md.")],
    model: Annotated[Path | None, typer.Option(help="A Hugging Face model folder with the Memento tokens.")] = None,
    run: Annotated[list[str] | None, typer.Option(help=RUN, metavar="NAME=MODEL")] = None,
    protocol: Annotated[str, typer.Option(help=PROTOCOL)] = "paper",
    n_samples: Annotated[
        int | None, typer.Option(help="Samples per problem (k of pass@k / maj@k) [default: the protocol's].")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy [default: the protocol's].")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling [default: the protocol's].")] = None,
    top_k: Annotated[int | None, typer.Option(help="0 = no top-k cut [default: the protocol's].")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Generation length limit per sample [default: the protocol's].")
    ] = None,
    answer_in_open_think: Annotated[
        bool,
        typer.Option(
            "--answer-in-open-think", help="Read a completion cut off inside <think> for an answer (the paper: none)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Each sample's seed is a hash of this, its problem and its number.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems (raise it to extend a run).")] = None,
    engine: Annotated[
        str,
        typer.Option(help="reference (KV measured while decoding), vllm, or server (a running memento serve)."),
    ] = "reference",
    server: Annotated[
        str | None,
        typer.Option(help="--engine server: its URL, e.g. http://127.0.0.1:8000; its /metrics are polled live."),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (reference: float32; vLLM: the model's), float32, bfloat16.")
    ] = "auto",
    batch_size: Annotated[
        int | None, typer.Option(help="Samples per engine call, saved after each [default: 16 reference, 256 vLLM].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Reference engine: cpu, cuda, cuda:1 [default: cuda if there is one].")
    ] = None,
    policy: options.Policy = "keep0",
    mask_delimiters: options.MaskDelimiters = None,
    keep_last_block_for_answer: options.KeepLastBlock = False,
    restart: options.Restart = False,
    restart_mode: options.RestartMode = "strict",
    max_block_tokens: options.MaxBlockTokens = None,
    max_blocks: options.MaxBlocks = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Generate k samples per problem, check them, and report pass@1, pass@k, maj@k with the KV of every sample.

    One model (--model) or several runs compared on the same problems and seeds (--run, repeated). Writes
    report.md (the paper's Table 1 layout, differences with 95% intervals) and plots into --out. Interrupted? Run the
    same command again: finished samples are kept, the rest are generated.
    """
    from memento.core.errors import MementoError
    from memento.eval.report import RunSpec, context_note, describe, parse_run, run_all

    if (model is None) == (not run):
        raise MementoError("give either --model DIR or one or more --run NAME=DIR[?policy=...]")
    options.check(
        options.at_least("--n-samples", n_samples, 1),
        *options.sampling_rules(max_new_tokens, temperature, top_p, top_k),
        options.at_least("--limit", limit, 1),
        options.at_least("--batch-size", batch_size, 1),
        *options.policy_rules(max_block_tokens, max_blocks),
    )

    def flags(folder):  # the policy flags, mask_delimiters from `folder`'s family preset unless given
        flags = (policy, mask_delimiters, keep_last_block_for_answer, restart, max_block_tokens, max_blocks)
        return options.policy(*flags, folder, restart_mode)

    if model is not None:
        from dataclasses import asdict

        runs = [RunSpec(model.resolve().name, str(model.resolve()), asdict(flags(model)))]
    else:
        runs = [parse_run(spec, flags(spec.partition("=")[2].partition("?")[0] or None)) for spec in run]
    common = {
        "protocol": "" if protocol == "none" else protocol,
        "answer_in_open_think": answer_in_open_think,
        "samples": n_samples,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "engine": engine,
        "dtype": dtype,
    }
    result = run_all(runs, task, out_dir, common, limit, batch_size, progress(quiet), device, server)
    grid = Table(title="no protocol" if protocol == "none" else f"protocol {protocol}")
    columns = ["run", "policy", "task", "samples", "pass@1", "pass@k", "maj@k", "no answer", "tokens", "peak KV"]
    columns += ["KV AUC (ktok)"]
    for column in columns:
        grid.add_column(column, justify="left" if column in ("run", "policy", "task") else "right", overflow="fold")
    policies = {r.name: describe(r.policy) for r in runs}
    for s in result["summaries"]:
        lo, hi = s["pass@1_ci95"]
        k = s["samples"]
        cells = [s["run"], policies[s["run"]], s["task"], str(k)]
        cells.append(f"{100 * s['pass@1']:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}]")
        maj = s[f"maj@{k}"]
        cells += [f"{100 * s[f'pass@{k}']:.1f}%", "-" if maj is None else f"{100 * maj:.1f}%"]
        cells += [
            f"{100 * s['no_answer']:.1f}%",
            f"{s['tokens']:.0f}",
            f"{s['peak_kv_tokens']:.0f}",
            f"{s['auc_kv_ktok']:.1f}",
        ]
        grid.add_row(*cells)
    out.print(grid)
    for c_run, c in (result.get("comp_math") or {}).items():
        if c:
            se = "" if c["se"] is None else f" ± {100 * c['se']:.1f}"
            out.print(f"{c_run}: Comp. Math {100 * c['pass@1']:.1f}%{se} ({len(c['tasks'])} of {c['of']} competitions)")
    for s in result["summaries"]:
        if note := context_note(s):
            out.print(f"{s['run']}, {s['task']}: {note}", style="yellow")
        for d in s.get("deviations") or []:
            out.print(f"{s['run']}, {s['task']}: departs from the {protocol} protocol: {d}", style="yellow")
    for d in result["differences"]:
        lo, hi = d["pass@1_delta_ci95"]
        r = d["peak_kv_ratio"]
        peak = "" if not r else f", peak KV {r:.2f}x lower" if r >= 1 else f", peak KV {1 / r:.2f}x higher"
        out.print(
            f"{d['run']} - {d['baseline']} on {d['task']}: pass@1 {100 * d['pass@1_delta']:+.1f} points "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}]{peak}"
        )
    for s in result["summaries"]:
        if live := s.get("live_kv"):
            worst = live["max_relative_difference"]
            shown = "-" if worst is None else f"{100 * worst:.2f}%"
            n = live["requests"]
            out.print(f"{s['run']}, {s['task']}: live /metrics peak vs replay over {n} requests: at most {shown} apart")
    out.print(f"report: {out_dir / 'report.md'}   summary: {out_dir / 'summary.json'}")
