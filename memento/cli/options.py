"""Options shared by commands: the `EvictionPolicy` flags of `memento generate`, `serve` and `eval`, and `check`,
which names every option with a bad value at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memento.core.errors import MementoError

Rule = tuple[str, object, bool, str]  # (flag, value, whether the value is fine, what it must be): see `check`

Policy = Annotated[str, typer.Option(help="full, keep0 (evict every block), keep1, or keepN.")]
MaskDelimiters = Annotated[
    bool | None,
    typer.Option(
        "--mask-delimiters/--keep-delimiters",
        help="Evict block delimiters with the block, or keep them visible [default: the model family's preset].",
        show_default=False,
    ),
]
KeepLastBlock = Annotated[bool, typer.Option(help="The last block stays visible to the answer.")]
Restart = Annotated[bool, typer.Option(help="Strict forgetting: recompute mementos without their block.")]
RestartMode = Annotated[
    str,
    typer.Option(
        help="With --restart: strict (recompute every token after the block) or release (the paper's release: the "
        "newest memento only, delimiters always evicted)."
    ),
]
Forget = Annotated[
    str | None,
    typer.Option(
        metavar="REGEX",
        help="Selective strict forgetting: only the blocks whose text matches REGEX (re.search) are forgotten as with "
        "--restart (in its --restart-mode), the others are evicted normally; with or without --restart.",
    ),
]
MaxBlockTokens = Annotated[int | None, typer.Option(help="Force <|block_end|> after this many.")]
MaxBlocks = Annotated[int | None, typer.Option(help="Force </think> after this many blocks.")]
CompactPrompt = Annotated[
    bool,
    typer.Option(
        help="Multi-turn chats: evict the blocks of earlier assistant turns as the prompt is fed, keeping their "
        'mementos (a request may ask for it: memento_policy {"compact_prompt": true}).'
    ),
]


def policy(
    name: str,
    mask_delimiters: bool | None,
    keep_last_block_for_answer: bool,
    restart: bool,
    max_block_tokens: int | None,
    max_blocks: int | None,
    model=None,
    restart_mode: str = "strict",
    compact_prompt: bool = False,
):
    """The policy the flags name; `mask_delimiters` None: the preset of `model`'s family (`memento.core.presets`),
    said on stderr."""
    from memento.core.policy import EvictionPolicy

    if mask_delimiters is None:
        mask_delimiters = name != "full" and preset(model).mask_delimiters
    return EvictionPolicy.named(
        name,
        mask_delimiters=mask_delimiters,
        keep_last_block_for_answer=keep_last_block_for_answer,
        restart=restart,
        restart_mode=restart_mode,
        max_block_tokens=max_block_tokens,
        max_blocks=max_blocks,
        compact_prompt=compact_prompt,
    )


def preset(model):
    """The preset of `model` (a folder or hub name; None: the default), said once on stderr."""
    from memento.cli.app import err
    from memento.core import presets

    found = presets.for_model(model) if model is not None else presets.DEFAULT
    if model is not None and Path(str(model)).is_dir():  # a folder whose config names its family
        err.print(f"{model}: {found.describe()}", style="dim", markup=False)
    return found


def check(*rules: Rule) -> None:
    """One error naming every option whose value breaks its rule, by its flag and value:
    `check(at_least("--workers", workers, 1), ("--top-p", top_p,
    0 < top_p <= 1, "in (0, 1]"))` -> `--workers -1: must be at least 1; --top-p 3.0: must be in (0, 1]`."""
    bad = [f"{flag} {value}: must be {must}" for flag, value, fine, must in rules if not fine]
    if bad:
        raise MementoError("; ".join(bad))


def at_least(flag: str, value: float | None, low: float) -> Rule:
    """The rule of `check` for a number of at least `low` (None, an option not given, is fine)."""
    return flag, value, value is None or value >= low, f"at least {low}"


def policy_rules(max_block_tokens: int | None, max_blocks: int | None) -> list[Rule]:
    """The rules of `check` for the policy's numeric flags."""
    return [at_least("--max-block-tokens", max_block_tokens, 1), at_least("--max-blocks", max_blocks, 1)]


def sampling_rules(max_new_tokens, temperature, top_p, top_k) -> list[Rule]:
    """The rules of `check` for the sampling flags (None: not given)."""
    return [
        at_least("--max-new-tokens", max_new_tokens, 1),
        at_least("--temperature", temperature, 0),
        ("--top-p", top_p, top_p is None or 0 < top_p <= 1, "in (0, 1]"),
        at_least("--top-k", top_k, 0),
    ]
