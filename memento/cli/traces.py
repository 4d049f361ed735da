"""`memento inspect` and `memento kv`: statistics and KV accounting of Memento traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import track
from rich.table import Table

from memento.cli.app import app, err, out, user_errors
from memento.core.errors import MementoError

TOKENIZERS = "qwen (the Qwen3 vocabulary), smollm2, chars (the toy world's one token per character)"


def _load_traces(path: Path, lenient: bool):
    from memento.core.rows import read_traces

    dropped = []  # what --lenient left out, said on stderr so that a missing block is never silent
    traces = read_traces(
        path, lenient=lenient, on_drop=lambda where, ds: dropped.extend((where, d) for d in sorted(ds))
    )
    for where, d in dropped[:10]:
        text = " ".join(d.text.split())
        text = f": {text[:60]!r}{'...' if len(text) > 60 else ''}" if text else ""
        err.print(
            f"warning: {where}: field 'response': --lenient dropped {d.reason} (at character {d.offset}){text}",
            markup=False,
        )
    if len(dropped) > 10:
        err.print(f"warning: --lenient dropped {len(dropped) - 10} more piece(s) of {path}", markup=False)
    if not traces:
        raise MementoError(f"{path}: no traces found")
    return traces


def _labelled(traces, tokenizer, quiet: bool):
    from memento.core.chat import label_trace

    items = traces if quiet or len(traces) < 20 else track(traces, description="tokenizing", console=err)
    return [label_trace(t, tokenizer) for t in items]


@app.command()
@user_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="OpenMementos rows (.jsonl/.json/.parquet) or a segments JSON file.")],
    tokenizer: Annotated[str, typer.Option(help=f"{TOKENIZERS} or a Hugging Face model folder.")] = "qwen",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    lenient: Annotated[bool, typer.Option(help="Recover what parses from malformed responses.")] = False,
):
    """Statistics of Memento traces: blocks, block and memento tokens, compression."""
    from memento.core.stats import summarize, trace_stats
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
            str(i),
            str(s["blocks"]),
            _brief(s["block_tokens"]),
            _brief(s["memento_tokens"]),
            f"{s['compression_ratio']:.3f}",
        )
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
@user_errors
def kv(
    path: Annotated[Path, typer.Argument(help="OpenMementos rows or a segments JSON file.")],
    model: Annotated[str, typer.Option(help="A preset (qwen3-8b, qwen3-32b, ...) or a Hugging Face model folder.")],
    policy: Annotated[str, typer.Option(help="full, keep0 (evict every block), keep1, or keepN.")] = "keep0",
    mask_delimiters: Annotated[bool, typer.Option(help="Evict block delimiters with the block.")] = False,
    keep_last_block_for_answer: Annotated[
        bool, typer.Option(help="The last block stays visible to the answer.")
    ] = False,
    restart: Annotated[bool, typer.Option(help="Strict forgetting (same KV occupancy as keepN).")] = False,
    tokenizer: Annotated[
        str | None, typer.Option(help=f"Override the model's tokenizer: {TOKENIZERS} or a model folder.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the KV sawtooth of one trace to this PNG.")] = None,
    index: Annotated[int, typer.Option(help="Which trace to plot.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    lenient: Annotated[bool, typer.Option(help="Recover what parses from malformed responses.")] = False,
):
    """Peak KV and KV AUC of traces under a Memento policy vs full attention, by token replay."""
    from memento.core.kv import average, compare, geometry_of, plot_sawtooth
    from memento.core.policy import EvictionPolicy
    from memento.tokenizer import load_tokenizer

    flags = dict(
        mask_delimiters=mask_delimiters, keep_last_block_for_answer=keep_last_block_for_answer, restart=restart
    )
    pol = EvictionPolicy.named(policy, **flags)
    geometry, tok_spec, note = geometry_of(model, tokenizer)
    if note:
        err.print(f"note: {note}")
    traces = _load_traces(path, lenient)
    if not 0 <= index < len(traces):
        raise MementoError(f"--index {index} is out of range: {path} has {len(traces)} trace(s)")
    labelled = _labelled(traces, load_tokenizer(tok_spec), as_json)
    comparisons = [compare(lab.spans, pol, geometry, lab.encoded.completion_start) for lab in labelled]
    per_trace = [c.summary() for c in comparisons]
    result = average(per_trace)
    result |= {
        "model": geometry.name,
        "bytes_per_token": geometry.bytes_per_token,
        "tokenizer": tok_spec,
        "policy": policy,
        "traces": per_trace,
    }
    if plot is not None:  # the title describes the plotted trace, not the mean over all of them
        which = f", trace index {index}" if len(traces) > 1 else ""
        title = f"{geometry.name}, {policy}{which}: peak {per_trace[index]['peak_ratio']:.2f}x lower"
        result["plot"] = str(plot_sawtooth(comparisons[index], plot, title))
    if as_json:
        out.print_json(json.dumps(result))
        return
    gib = 1e9
    kib = geometry.bytes_per_token / 1024
    out.print(f"{len(traces)} trace(s), {geometry.name} ({kib:g} KiB/token), policy {policy}")
    if len(traces) > 1:
        out.print(f"mean over the {len(traces)} traces of each trace's peak and AUC; ratios of the means")
    mean = "mean " if len(traces) > 1 else ""
    out.print(
        f"{mean}peak KV: full {result['full_peak_bytes'] / gib:.3f} GB -> "
        f"memento {result['memento_peak_bytes'] / gib:.3f} GB  ({result['peak_ratio']:.2f}x lower)"
    )
    out.print(
        f"{mean}KV AUC:  full {result['full_auc_gb_ktok']:.3f} -> memento {result['memento_auc_gb_ktok']:.3f} "
        f"GB x ktok  ({result['auc_ratio']:.2f}x lower)"
    )
    if plot is not None:
        ratio = per_trace[index]["peak_ratio"]
        out.print(f"plot: {result['plot']} (trace index {index}: peak {ratio:.2f}x lower)")
