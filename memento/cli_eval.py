"""`memento eval`: accuracy and KV of a model on a task (registered in `memento.cli`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from memento import cli_policy

out = Console(highlight=False, soft_wrap=True, markup=False)


def evaluate(
    model: Annotated[Path, typer.Option(help="A Hugging Face model folder with the Memento tokens.")],
    task: Annotated[str, typer.Option(help="champ, gym:GENERATOR (e.g. gym:basic_arithmetic).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: results.jsonl, summary.json (resumable).")],
    n_samples: Annotated[int, typer.Option(help="Samples per problem (k of pass@k / maj@k).")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy (the paper samples at 0.6).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling (the paper: 0.95).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="0 = no top-k cut (the paper: 20).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit per sample.")] = 4096,
    seed: Annotated[int, typer.Option(help="Sample j of problem i uses seed + i * k + j.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems (raise it to extend a run).")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples generated together.")] = 16,
    policy: cli_policy.Policy = "keep0",
    mask_delimiters: cli_policy.MaskDelimiters = False,
    keep_last_block_for_answer: cli_policy.KeepLastBlock = False,
    restart: cli_policy.Restart = False,
    max_block_tokens: cli_policy.MaxBlockTokens = None,
    max_blocks: cli_policy.MaxBlocks = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Generate k samples per problem of a task, check them, and report pass@1, pass@k, maj@k with KV statistics.

    Interrupted? Run the same command again: finished samples are kept, the rest are generated.
    """
    from memento.eval.run import EvalSettings
    from memento.eval.run import evaluate as run

    pol = cli_policy.policy(policy, mask_delimiters, keep_last_block_for_answer, restart, max_block_tokens, max_blocks)
    settings = EvalSettings(str(model.resolve()), task, n_samples, temperature, top_p, top_k, max_new_tokens, seed,
                            asdict(pol))  # fmt: skip
    s = run(settings, out_dir, limit=limit, batch_size=batch_size, progress=not quiet)
    k = s["samples"]
    grid = Table(title=f"{s['task']}: {s['problems']} problems x {k} samples ({policy})")
    lo, hi = s["pass@1_ci95"]
    cells = {"pass@1": f"{100 * s['pass@1']:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}]"}
    if k > 1:
        cells |= {f"pass@{k}": f"{100 * s[f'pass@{k}']:.1f}%", f"maj@{k}": f"{100 * s[f'maj@{k}']:.1f}%"}
    cells |= {"no answer": f"{100 * s['no_answer']:.1f}%", "tokens": f"{s['tokens']:.0f}",
              "peak KV": f"{s['peak_kv_tokens']:.0f}", "KV AUC (ktok)": f"{s['auc_kv_ktok']:.1f}"}  # fmt: skip
    for column in cells:
        grid.add_column(column, justify="right")
    grid.add_row(*cells.values())
    out.print(grid)
    out.print(f"results: {out_dir / 'results.jsonl'}   summary: {out_dir / 'summary.json'}")
