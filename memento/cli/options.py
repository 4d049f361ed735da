"""The `EvictionPolicy` options shared by `memento generate` and `memento serve`."""

from __future__ import annotations

from typing import Annotated

import typer

Policy = Annotated[str, typer.Option(help="full, keep0 (evict every block), keep1, or keepN.")]
MaskDelimiters = Annotated[bool, typer.Option(help="Evict block delimiters with the block.")]
KeepLastBlock = Annotated[bool, typer.Option(help="The last block stays visible to the answer.")]
Restart = Annotated[bool, typer.Option(help="Strict forgetting: recompute mementos without their block.")]
MaxBlockTokens = Annotated[int | None, typer.Option(help="Force <|block_end|> after this many.")]
MaxBlocks = Annotated[int | None, typer.Option(help="Force </think> after this many blocks.")]


def policy(
    name: str,
    mask_delimiters: bool,
    keep_last_block_for_answer: bool,
    restart: bool,
    max_block_tokens: int | None,
    max_blocks: int | None,
):
    from memento.core.policy import EvictionPolicy

    return EvictionPolicy.named(
        name,
        mask_delimiters=mask_delimiters,
        keep_last_block_for_answer=keep_last_block_for_answer,
        restart=restart,
        max_block_tokens=max_block_tokens,
        max_blocks=max_blocks,
    )
