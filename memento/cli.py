"""The `memento` command line: thin wrappers that parse options, call the library and print.

Bad input ends with one `error: ...` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

import memento
from memento import cli_policy
from memento.errors import MementoError

app = typer.Typer(
    help="Memento: reasoning models that manage their own context. Data, training, engines and KV accounting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)  # never wrap or restyle paths
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool):
    if value:
        out.print(f"memento {memento.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars between our own progress bars


def _user_errors(fn):
    """Turn library errors about bad input into one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MementoError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from None

    return wrapper


def _load_traces(path: Path, lenient: bool):
    from memento.rows import read_traces

    traces = read_traces(path, lenient=lenient)
    if not traces:
        raise MementoError(f"{path}: no traces found")
    return traces


def _labelled(traces, tokenizer, quiet: bool):
    from memento.stats import label_trace

    items = traces if quiet or len(traces) < 20 else track(traces, description="tokenizing", console=err)
    return [label_trace(t, tokenizer) for t in items]


@app.command()
@_user_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="OpenMementos rows (.jsonl/.json/.parquet) or a segments JSON file.")],
    tokenizer: Annotated[str, typer.Option(help="qwen, smollm2 or a Hugging Face model folder.")] = "qwen",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    lenient: Annotated[bool, typer.Option(help="Recover what parses from malformed responses.")] = False,
):
    """Statistics of Memento traces: blocks, block and memento tokens, compression."""
    from memento.stats import summarize, trace_stats
    from memento.tokenizer import load_tokenizer

    traces = _load_traces(path, lenient)
    stats = [trace_stats(lab) for lab in _labelled(traces, load_tokenizer(tokenizer), as_json)]
    summary = summarize(stats)
    if as_json:
        out.print_json(json.dumps({"path": str(path), "tokenizer": tokenizer, "traces": stats, "summary": summary}))
        return
    table = Table(title=f"{path.name}: {len(traces)} trace(s), tokens counted with {tokenizer}")
    for col in ("#", "blocks", "block tokens", "memento tokens", "compression"):
        table.add_column(col, justify="right")
    for i, s in enumerate(stats[:20]):
        table.add_row(
            str(i), str(s["blocks"]), _brief(s["block_tokens"]), _brief(s["memento_tokens"]),
            f"{s['compression_ratio']:.3f}",
        )  # fmt: skip
    out.print(table)
    if len(stats) > 20:
        out.print(f"... {len(stats) - 20} more traces (use --json for all)")
    out.print(
        f"median blocks {summary['blocks_median']:g}, mean block {summary['block_tokens_mean']:.0f} tokens, "
        f"mean memento {summary['memento_tokens_mean']:.0f} tokens, compression {summary['compression_ratio']:.3f} "
        f"(per-block median {summary['block_compression_median']:.3f})"
    )


def _brief(values: list[int]) -> str:
    text = " ".join(map(str, values[:8]))
    return text + (" ..." if len(values) > 8 else "")


@app.command()
@_user_errors
def kv(
    path: Annotated[Path, typer.Argument(help="OpenMementos rows or a segments JSON file.")],
    model: Annotated[str, typer.Option(help="A preset (qwen3-8b, qwen3-32b, ...) or a Hugging Face model folder.")],
    policy: Annotated[str, typer.Option(help="full, keep0 (evict every block), keep1, or keepN.")] = "keep0",
    mask_delimiters: Annotated[bool, typer.Option(help="Evict block delimiters with the block.")] = False,
    keep_last_block_for_answer: Annotated[
        bool, typer.Option(help="The last block stays visible to the answer.")
    ] = False,
    restart: Annotated[bool, typer.Option(help="Strict forgetting (same KV occupancy as keepN).")] = False,
    tokenizer: Annotated[str | None, typer.Option(help="Override the tokenizer: qwen, smollm2 or a folder.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the KV sawtooth of one trace to this PNG.")] = None,
    index: Annotated[int, typer.Option(help="Which trace to plot.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    lenient: Annotated[bool, typer.Option(help="Recover what parses from malformed responses.")] = False,
):
    """Peak KV and KV AUC of traces under a Memento policy vs full attention, by token replay."""
    from memento.engine.policy import EvictionPolicy
    from memento.kv import PRESETS, KVGeometry, compare, plot_sawtooth, preset
    from memento.tokenizer import load_tokenizer

    flags = dict(
        mask_delimiters=mask_delimiters, keep_last_block_for_answer=keep_last_block_for_answer, restart=restart
    )
    pol = EvictionPolicy.named(policy, **flags)
    if model in PRESETS or not Path(model).is_dir():
        geometry = preset(model)
        tok_spec = tokenizer or geometry.tokenizer or "qwen"
        if tokenizer is None and geometry.tokenizer is None:
            err.print(f"note: no offline tokenizer for {model}; counting tokens with the Qwen3 vocabulary")
    else:
        from transformers import AutoConfig

        try:
            geometry = KVGeometry.from_config(AutoConfig.from_pretrained(model), name=Path(model).name)
        except (OSError, ValueError) as e:
            raise MementoError(f"{model}: cannot read the model config: {e}") from None
        tok_spec = tokenizer or model
    traces = _load_traces(path, lenient)
    if not 0 <= index < len(traces):
        raise MementoError(f"--index {index} is out of range: {path} has {len(traces)} trace(s)")
    labelled = _labelled(traces, load_tokenizer(tok_spec), as_json)
    comparisons = [compare(lab.spans, pol, geometry, lab.encoded.completion_start) for lab in labelled]
    per_trace = [c.summary() for c in comparisons]
    result = _mean_summary(per_trace)
    result |= {
        "model": geometry.name,
        "bytes_per_token": geometry.bytes_per_token,
        "tokenizer": tok_spec,
        "policy": policy,
        "traces": per_trace,
    }
    if plot is not None:
        title = f"{geometry.name}, {policy}: peak {result['peak_ratio']:.2f}x lower"
        result["plot"] = str(plot_sawtooth(comparisons[index], plot, title))
    if as_json:
        out.print_json(json.dumps(result))
        return
    gib = 1e9
    kib = geometry.bytes_per_token / 1024
    out.print(f"{len(traces)} trace(s), {geometry.name} ({kib:g} KiB/token), policy {policy}")
    out.print(
        f"peak KV: full {result['full_peak_bytes'] / gib:.3f} GB -> memento {result['memento_peak_bytes'] / gib:.3f} GB"
        f"  ({result['peak_ratio']:.2f}x lower)"
    )
    out.print(
        f"KV AUC:  full {result['full_auc_gb_ktok']:.3f} -> memento {result['memento_auc_gb_ktok']:.3f} GB x ktok"
        f"  ({result['auc_ratio']:.2f}x lower)"
    )
    if plot is not None:
        out.print(f"plot: {result['plot']}")


def _mean_summary(per_trace: list[dict]) -> dict:
    """Mean bytes over traces; ratios of the means (as the paper's averaged peak-KV table)."""
    n = len(per_trace)
    mean = {k: sum(t[k] for t in per_trace) / n for k in per_trace[0] if not k.endswith("ratio")}
    for k in ("full_peak_bytes", "memento_peak_bytes", "full_peak_tokens", "memento_peak_tokens", "evicted_tokens"):
        mean[k] = round(mean[k])
    mean["peak_ratio"] = mean["full_peak_bytes"] / max(mean["memento_peak_bytes"], 1)
    auc = mean["memento_auc_gb_ktok"]
    mean["auc_ratio"] = mean["full_auc_gb_ktok"] / auc if auc else float("inf")
    return {"n_traces": n, **mean}


data_app = typer.Typer(help="Build Memento training data from raw reasoning traces.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter("use i/N, e.g. 0/4") from None
    return i, n


@data_app.command("build")
@_user_errors
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
    timeout: Annotated[float, typer.Option(help="openai: seconds per request before a retry.")] = 120.0,
    price_in: Annotated[float, typer.Option(help="Cost per million prompt tokens, for stats.")] = 0.0,
    price_out: Annotated[float, typer.Option(help="Cost per million completion tokens, for stats.")] = 0.0,
    tokenizer: Annotated[str, typer.Option(help="Token counter: qwen, smollm2 or a model folder.")] = "qwen",
    workers: Annotated[int, typer.Option(help="Traces processed concurrently.")] = 1,
    shard: Annotated[str, typer.Option(help="i/N: process every N-th trace starting at i.")] = "0/1",
    limit: Annotated[int | None, typer.Option(help="Process at most this many traces (of this shard).")] = None,
    rounds: Annotated[int, typer.Option(help="Judge -> revise rounds for mementos scoring below 8.")] = 2,
    min_block_tokens: Annotated[int, typer.Option(help="Smallest block.")] = 200,
    max_block_tokens: Annotated[int, typer.Option(help="Largest block; 0 for no cap.")] = 1536,
    lam: Annotated[float, typer.Option("--lambda", help="Weight of the block-length CV in the objective.")] = 0.5,
):
    """Turn raw traces into OpenMementos rows (+ stats.json, report.md); resumable."""
    from memento.data.pipeline import Config, build

    config = Config(
        backend=backend, base_url=base_url, model=model, two_pass=two_pass, timeout=timeout, price_in=price_in,
        price_out=price_out, tokenizer=tokenizer, min_block_tokens=min_block_tokens,
        max_block_tokens=max_block_tokens or None, lam=lam, rounds=rounds, workers=workers, shard=_shard(shard),
        limit=limit,
    )  # fmt: skip
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("building", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("build", total=None)
        stats = build(
            input, out_dir, config, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    out.print(
        f"{stats['succeeded']} traces built, {stats['failed']} failed -> {out_dir / 'openmementos.jsonl'}; "
        f"median {stats['blocks_per_trace'].get('median', 0):g} blocks per trace, compression per trace "
        f"{stats['compression_per_trace'].get('mean', 0):.3f}; report: {out_dir / 'report.md'}"
    )
    if stats["unfinished"]:
        err.print(f"{stats['unfinished']} traces not finished (the LLM endpoint failed): re-run to retry them")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_user_errors
def train(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Option("--recipe", help="Training recipe (YAML), e.g. recipes/cpu-tiny.yaml.")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in the out folder.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """SFT with the two-stage curriculum. Extra arguments override the recipe: `optim.lr=1e-4 stages.1.epochs=2`.

    Multi-GPU: `accelerate launch -m memento train --recipe ...` (DDP / FSDP / DeepSpeed from accelerate's config).
    """
    from memento.train.config import load_recipe
    from memento.train.trainer import Trainer

    config = load_recipe(recipe, ctx.args)
    trainer = Trainer(config, progress=not quiet)
    if trainer.accelerator.is_main_process:
        err.print(f"precision: {trainer.precision.precision} ({trainer.precision.reason})")
    result = trainer.run(resume)
    if not result.main_process:
        return
    table = Table(title=f"held-out loss by token kind ({result.counts['eval']} examples)")
    table.add_column("after stage")
    table.add_column("mask")
    for kind in ("block", "memento", "answer", "all"):
        table.add_column(kind, justify="right")
    for stage, masks in result.evals.items():
        for mask, values in masks.items():
            table.add_row(
                stage,
                mask,
                *(f"{values.get('loss/' + k, float('nan')):.4f}" for k in ("block", "memento", "answer", "all")),
            )
    out.print(table)
    out.print(f"model: {result.final}   log: {result.out / 'log.jsonl'}   tensorboard: {result.out / 'tensorboard'}")


STYLES = {"BLOCK": "dim cyan", "SUMMARY": "bold green", "ANSWER": "", "PROMPT": ""}


@app.command()
@_user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (the chat template is applied).")],
    model: Annotated[Path, typer.Option(help="A Hugging Face model folder with the Memento tokens.")],
    policy: cli_policy.Policy = "keep0",
    mask_delimiters: cli_policy.MaskDelimiters = False,
    keep_last_block_for_answer: cli_policy.KeepLastBlock = False,
    restart: cli_policy.Restart = False,
    max_block_tokens: cli_policy.MaxBlockTokens = None,
    max_blocks: cli_policy.MaxBlocks = None,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit.")] = 1024,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="0 = no top-k cut.")] = 0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    add_tokens: Annotated[
        bool, typer.Option(help="Add missing Memento tokens (untrained embeddings: for plumbing tests only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print text, trace and statistics as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the KV timeline (memento vs full) to this PNG.")] = None,
):
    """Generate with physical KV eviction (the reference engine) and report the KV it held."""
    from rich.text import Text

    from memento.engine.generate import ReferenceEngine
    from memento.engine.sampling import Sampling
    from memento.kv import compare, plot_sawtooth
    from memento.spans import Kind, label
    from memento.tokenizer import encode_chat

    pol = cli_policy.policy(policy, mask_delimiters, keep_last_block_for_answer, restart, max_block_tokens, max_blocks)
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, seed, tuple(stop or ()))
    engine = ReferenceEngine.from_pretrained(model, pol, device=device, add_tokens=add_tokens)
    (result,) = engine.generate(prompt, sampling)
    data = result.to_dict() | {"policy": policy}
    if plot is not None:
        encoded = encode_chat(engine.tokenizer, prompt)
        fed = encoded.ids + (result.ids if result.finish_reason == "forced" else result.ids[:-1])
        spans = label(fed, engine.special, encoded.completion_start, strict=False)
        comparison = compare(spans, pol, engine.geometry, encoded.completion_start)
        data["plot"] = str(plot_sawtooth(comparison, plot, f"{model.name}, {policy}"))
    if as_json:
        out.print_json(json.dumps(data))
        return
    spans = label(engine.encode(prompt) + result.ids, engine.special, len(engine.encode(prompt)), strict=False)
    text = Text()
    start = len(spans) - len(result.ids)
    for token, kind in zip(result.ids, spans.kind[start:], strict=True):
        piece = engine.tokenizer.decode([token], skip_special_tokens=False)
        text.append(piece, style=STYLES.get(Kind(kind).name, "magenta"))
    out.print(text)
    s = result.stats
    out.rule("KV")
    out.print(
        f"{s.generated_tokens} tokens ({result.finish_reason}), {s.blocks} blocks, {s.evictions} evictions freeing "
        f"{s.evicted_tokens} tokens; KV peak {s.peak_kv_tokens} tokens ({s.peak_kv_bytes / 2**20:.2f} MiB), "
        f"final {s.final_kv_tokens}; {s.ms_per_token:.1f} ms/token"
    )
    if plot is not None:
        out.print(f"plot: {data['plot']}")


from memento import cli_science  # noqa: E402  (the science commands, registered here)

app.command()(_user_errors(cli_science.demo))
app.command()(_user_errors(cli_science.probe))
app.command()(_user_errors(cli_science.experiment))

from memento import cli_serve  # noqa: E402

app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_user_errors(cli_serve.serve))

from memento import cli_bench  # noqa: E402

cli_bench.app.command()(_user_errors(cli_bench.throughput))
app.add_typer(cli_bench.app, name="bench")

from memento import cli_eval  # noqa: E402

app.command("eval")(_user_errors(cli_eval.evaluate))
