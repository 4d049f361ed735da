"""`memento train`: block-masked SFT with the two-stage curriculum."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memento.cli.app import app, err, out, progress, user_errors


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
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
    trainer = Trainer(config, progress=progress(quiet))
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
