"""`memento data build`: raw reasoning traces -> OpenMementos rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memento.cli.app import app, err, out, user_errors

data_app = typer.Typer(help="Build Memento training data from raw reasoning traces.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter("use i/N, e.g. 0/4") from None
    return i, n


@data_app.command("build")
@user_errors
def data_build(
    input: Annotated[str, typer.Argument(help="JSONL/Parquet with problem + cot/response, or 'champ'.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder; re-running resumes.")],
    backend: Annotated[
        str, typer.Option(help="offline (heuristic scorer, extractive compressor, rule judge), openai or hf.")
    ] = "offline",
    base_url: Annotated[str | None, typer.Option(help="openai: endpoint, e.g. http://127.0.0.1:8000/v1.")] = None,
    model: Annotated[
        str | None, typer.Option(help="openai: model name (key from $OPENAI_API_KEY); hf: a folder or smollm2.")
    ] = None,
    two_pass: Annotated[bool, typer.Option(help="openai: score boundaries twice (windows 16, 11).")] = False,
    temperature: Annotated[
        float | None, typer.Option(help="openai: sampling temperature (default: not sent; reasoning models refuse it).")
    ] = None,
    reasoning_effort: Annotated[
        str | None, typer.Option(help="openai: reasoning effort (low, medium, high), passed through when given.")
    ] = None,
    max_completion_tokens: Annotated[
        int, typer.Option(help="openai: tokens per reply, reasoning included (0: the stage's own small budget).")
    ] = 16_000,
    timeout: Annotated[float, typer.Option(help="openai: seconds per request before a retry.")] = 120.0,
    price_in: Annotated[float, typer.Option(help="Cost per million prompt tokens, for stats.")] = 0.0,
    price_out: Annotated[float, typer.Option(help="Cost per million completion tokens, for stats.")] = 0.0,
    tokenizer: Annotated[
        str,
        typer.Option(
            "--count-tokens",
            "--tokenizer",
            help="Token counter for block sizes: cl100k (the release's), qwen, smollm2, chars (one token per "
            "character) or a model folder.",
        ),
    ] = "cl100k",
    workers: Annotated[int, typer.Option(help="Traces processed concurrently.")] = 1,
    shard: Annotated[str, typer.Option(help="i/N: process every N-th trace starting at i.")] = "0/1",
    limit: Annotated[int | None, typer.Option(help="Process at most this many traces (of this shard).")] = None,
    rounds: Annotated[int, typer.Option(help="Judge -> revise rounds for mementos scoring below 8.")] = 2,
    min_block_tokens: Annotated[int, typer.Option(help="Smallest block.")] = 200,
    max_block_tokens: Annotated[int, typer.Option(help="Largest block (opt-in; 0: no cap, as the paper).")] = 0,
    lam: Annotated[float, typer.Option("--lambda", help="Weight of the block-length CV in the objective.")] = 0.5,
):
    """Turn raw traces into OpenMementos rows (+ stats.json, report.md); resumable."""
    from memento.cli import options
    from memento.data.pipeline import Config, build

    options.check(
        options.at_least("--workers", workers, 1),
        options.at_least("--rounds", rounds, 0),
        options.at_least("--min-block-tokens", min_block_tokens, 1),
        options.at_least("--max-block-tokens", max_block_tokens, 0),
    )
    config = Config(
        backend=backend,
        base_url=base_url,
        model=model,
        two_pass=two_pass,
        temperature=temperature,
        reasoning_effort=reasoning_effort,
        max_completion_tokens=max_completion_tokens or None,
        timeout=timeout,
        price_in=price_in,
        price_out=price_out,
        tokenizer=tokenizer,
        min_block_tokens=min_block_tokens,
        max_block_tokens=max_block_tokens or None,
        lam=lam,
        rounds=rounds,
        workers=workers,
        shard=_shard(shard),
        limit=limit,
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("building", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("build", total=None)
        stats = build(
            input, out_dir, config, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    _summary(stats, out_dir, min_block_tokens)
    if stats["unfinished"]:
        err.print(f"{stats['unfinished']} traces not finished (the LLM endpoint failed): re-run to retry them")


def _summary(stats: dict, out_dir: Path, min_block_tokens: int) -> None:
    from memento.data.report import readable, short_note

    if stats["resumed"]:
        out.print(f"resumed: {stats['resumed']} of {stats['todo']} traces were done by an earlier run into {out_dir}")
    dropped = ""
    if stats["dropped"]:
        dropped = f", {stats['dropped']} left out by the seed filters ({readable(stats['dropped_by_reason'])})"
    out.print(
        f"{stats['succeeded']} traces built, {stats['failed']} failed{dropped} -> {out_dir / 'openmementos.jsonl'}; "
        f"median {stats['blocks_per_trace'].get('median', 0):g} blocks per trace, compression per trace "
        f"{stats['compression_per_trace'].get('mean', 0):.3f}; report: {out_dir / 'report.md'}"
    )
    rates = [r for r in stats["judge_pass_rate_per_round"] if r is not None]
    if rates:
        steps = [f"{rates[0]:.0%} at first"] + [f"{r:.0%} after revision {i}" for i, r in enumerate(rates[1:], 1)]
        out.print(f"mementos passing the judge (score >= 8): {', '.join(steps)}")
    if stats["short_traces"]:
        out.print(f"note: {short_note(stats['short_traces'], min_block_tokens)}")
