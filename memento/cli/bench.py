"""`memento bench`: measurements as tools (registered in `memento.cli`). `throughput`: vLLM + Memento vs stock vLLM."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from memento.cli import options
from memento.cli.app import app, err, out, user_errors

bench_app = typer.Typer(no_args_is_help=True, help="Measure: serving throughput of vLLM + Memento against stock vLLM.")
app.add_typer(bench_app, name="bench")

WORKED_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worked_example.json"


@bench_app.command()
@user_errors
def throughput(
    model: Annotated[
        str | None, typer.Option(help="Model folder with the Memento tokens (default: SmolLM2-135M + Memento tokens).")
    ] = None,
    traces: Annotated[
        Path, typer.Option(help="Memento traces whose shapes the requests follow (rows JSONL or segments JSON).")
    ] = WORKED_EXAMPLE,
    requests: Annotated[int, typer.Option(help="Concurrent requests (one batch).")] = 16,
    scale: Annotated[float, typer.Option(help="Fraction of each block / memento / answer kept (1 = full).")] = 0.25,
    kv_pages: Annotated[
        int | None, typer.Option(help="KV pool in pages, the same for both engines (default: 4 longest requests).")
    ] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per KV page.")] = 32,
    dtype: Annotated[
        str, typer.Option(help="Model dtype in vLLM; auto: bfloat16 where this CPU/GPU runs it natively, else float32.")
    ] = "auto",
    policy: options.Policy = "keep0",
    mask_delimiters: options.MaskDelimiters = None,
    keep_last_block_for_answer: options.KeepLastBlock = False,
    restart: options.Restart = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Where throughput.md, .json, .png go.")] = Path("bench-out"),
):
    """Serve N teacher-forced requests on stock vLLM, then on vLLM + Memento, with the same model and KV pool.

    Reports output tokens/s, batch completion time, peak / mean KV usage and concurrency, as ratios, and plots KV
    usage over time for both. Each engine takes ~30 s to start; the batches take minutes on a CPU.
    """
    from transformers import AutoTokenizer

    from memento.core.errors import MementoError
    from memento.core.rows import read_traces
    from memento.engine.vllm import require_vllm
    from memento.tokenizer import smollm2_memento_dir

    require_vllm()
    from memento.engine.vllm import bench

    if requests < 1:
        raise MementoError(f"--requests {requests}: need at least one request")
    model = model or str(smollm2_memento_dir())
    pol = options.policy(policy, mask_delimiters, keep_last_block_for_answer, restart, None, None, model)
    if not pol.evicts:
        raise MementoError(f"--policy {policy} never evicts: the comparison needs a Memento policy (keep0, keepN)")
    work = bench.workload(AutoTokenizer.from_pretrained(model), read_traces(traces), requests, scale, traces.name)
    result = bench.compare(
        model,
        work,
        policy=pol,
        pages=kv_pages,
        block_size=block_size,
        dtype=dtype,
        phase=lambda text: err.print(f"[dim]·[/dim] {text}"),
    )
    command = shlex.join(["memento", "bench", "throughput", *sys.argv[3:]])
    lines = bench.write_report(
        [bench.Section(None, "throughput", result)], out_dir, command, title="Throughput: vLLM + Memento vs stock vLLM"
    )
    out.print("\n".join(lines[2:-3]))
    r = result["ratios"]
    out.print(
        f"Memento: {r['throughput']:.2f}x output tokens/s, {r['completion_time']:.2f}x faster batch, "
        f"{r['mean_running']:.2f}x requests running on average"
    )
    out.print(f"report: {out_dir / 'throughput.md'}")
