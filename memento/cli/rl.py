"""`memento rl`: CISPO on block-masked rollouts, from a Memento SFT checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memento.cli.app import app, err, out, progress, user_errors


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def rl(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Option("--recipe", help="RL recipe (YAML), e.g. recipes/rl-toy.yaml.")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in the out folder.")
    ] = False,
    rollout: Annotated[
        str | None,
        typer.Option(
            "--rollout",
            help="Rollout engine: reference or vllm (the extension; weights synced after every update) "
            "[default: the recipe's rollout.engine].",
        ),
    ] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the before/after evaluation.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """RL with rollouts under block masking (the paper's CISPO). Extra arguments override the recipe:
    `steps=20 rollout.group_size=4 loss.kind=grpo`.

    Every step logs reward, accuracy, KL, clip fraction, KV per rollout, blocks and block length, and the
    train/inference mismatch (the run stops when the trainer's block-masked log-probs leave the engine's).
    """
    from memento.rl.config import load_recipe
    from memento.rl.trainer import RLTrainer

    config = load_recipe(recipe, [*ctx.args, *([f"rollout.engine={rollout}"] if rollout else [])])
    policy = config.memento_policy()
    err.print(f"rollouts and training masks: {policy}", markup=False)
    summary = RLTrainer(config, progress=progress(quiet)).run(resume, evaluate=not no_eval)
    if "before" in summary:
        d = summary.get("difference") or {}
        out.print(
            f"accuracy {summary['before']:.3f} -> {summary['after']:.3f} "
            f"({100 * d.get('delta', 0):+.1f} pp, paired 95% CI {[round(100 * x, 1) for x in d.get('ci', [])]})"
        )
    out.print(f"model: {summary['final']}   log: {Path(config.out) / 'log.jsonl'}   report: {summary['report']}")
