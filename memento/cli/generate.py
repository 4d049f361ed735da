"""`memento generate`: one prompt through the reference engine, with physical KV eviction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memento.cli import options
from memento.cli.app import app, err, out, user_errors

STYLES = {"BLOCK": "dim cyan", "SUMMARY": "bold green", "ANSWER": "", "PROMPT": ""}


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (the chat template is applied).")],
    model: Annotated[Path, typer.Option(help="A Hugging Face model folder with the Memento tokens.")],
    policy: options.Policy = "keep0",
    mask_delimiters: options.MaskDelimiters = None,
    keep_last_block_for_answer: options.KeepLastBlock = False,
    restart: options.Restart = False,
    restart_mode: options.RestartMode = "strict",
    max_block_tokens: options.MaxBlockTokens = None,
    max_blocks: options.MaxBlocks = None,
    forget: options.Forget = None,
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

    from memento.core.kv import plot_sawtooth
    from memento.core.policy import forget_pattern
    from memento.core.spans import Kind
    from memento.core.units import size
    from memento.engine.generate import ReferenceEngine
    from memento.engine.sampling import Sampling

    options.check(
        *options.sampling_rules(max_new_tokens, temperature, top_p, top_k),
        *options.policy_rules(max_block_tokens, max_blocks),
    )
    if forget is not None:
        forget_pattern(forget, "--forget")
    pol = options.policy(
        policy, mask_delimiters, keep_last_block_for_answer, restart, max_block_tokens, max_blocks, model, restart_mode
    )
    options.check(("--forget", forget, forget is None or pol.evicts, "used with a policy that evicts blocks"))
    engine = ReferenceEngine.from_pretrained(model, pol, device=device, add_tokens=add_tokens)
    room = engine.room(prompt)
    if room is not None and max_new_tokens > room:
        err.print(
            f"--max-new-tokens {max_new_tokens}: the model's context is {engine.engine.context} tokens and the prompt "
            f"takes {engine.engine.context - room}, so at most {room} new tokens",
            style="yellow",
            markup=False,
        )
        max_new_tokens = room
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, seed, tuple(stop or ()), forget)
    (result,) = engine.generate(prompt, sampling)
    data = result.to_dict() | {"policy": policy} | ({} if forget is None else {"forget": forget})
    if plot is not None:
        data["plot"] = str(plot_sawtooth(engine.kv_comparison(result), plot, f"{model.name}, {policy}"))
    if as_json:
        out.print_json(json.dumps(data))
        return
    text = Text()
    kinds = result.spans(engine.special).kind[len(result.prompt_ids) :]
    for token, kind in zip(result.ids, kinds, strict=True):
        text.append(engine.decode([token]), style=STYLES.get(Kind(kind).name, "magenta"))
    out.print(text)
    s = result.stats
    out.rule("KV")
    out.print(
        f"{s.generated_tokens} tokens ({result.finish_reason}), {s.blocks} blocks, {s.evictions} evictions freeing "
        f"{s.evicted_tokens} tokens; KV peak {s.peak_kv_tokens} tokens ({size(s.peak_kv_bytes)}), "
        f"final {s.final_kv_tokens}; {s.ms_per_token:.1f} ms/token"
        + (f"; {s.forgotten} blocks forgotten strictly" if forget is not None or restart else "")
    )
    if plot is not None:
        out.print(f"plot: {data['plot']}")
