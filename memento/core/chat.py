"""A one-turn chat as token ids, and every token of it labelled: what training, the engines and the KV accounting read.

Duck-typed on any Hugging Face tokenizer (`apply_chat_template`, `encode`, `convert_tokens_to_ids`): nothing here
loads or changes a tokenizer (that is `memento.tokenizer`). Completions are tokenized after the prompt, exactly as a
model generating them would see them.
"""

from __future__ import annotations

from typing import NamedTuple

from memento.core.errors import MissingTokensError
from memento.core.format import (
    BLOCK_END,
    BLOCK_START,
    SPECIAL_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
    Trace,
    render,
    render_plain,
)
from memento.core.spans import MementoIds, Spans, label


class Encoded(NamedTuple):
    ids: list[int]  # the whole conversation
    completion_start: int  # index of the first assistant token


def encode_chat(tokenizer, problem: str, response: str | None = None) -> Encoded:
    """Token ids of a one-turn chat: the user's problem, then (optionally) the assistant's response.

    The response is tokenized on its own after the generation prompt, as a model generating it would produce it,
    followed by the template's end-of-turn text.
    """
    user = [{"role": "user", "content": problem}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    start = len(ids)
    if response is not None:
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], tokenize=False, add_generation_prompt=False
        )
        if not full.startswith(prompt + response):
            raise ValueError("the chat template does not render the assistant turn after its generation prompt")
        ids += tokenizer.encode(response, add_special_tokens=False)
        ids += tokenizer.encode(full[len(prompt) + len(response) :], add_special_tokens=False)
    return Encoded(ids, start)


def encode_messages(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat (`[{"role": ..., "content": ...}, ...]`, earlier assistant turns included) followed by
    the generation prompt of the next assistant turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def memento_ids(tokenizer) -> MementoIds:
    """The ids of the six special tokens; a clear error with the fix when some are missing."""
    found = dict(zip(SPECIAL_TOKENS, token_ids(tokenizer, SPECIAL_TOKENS), strict=True))
    missing = [t for t, i in found.items() if i is None]
    if missing:
        raise MissingTokensError(
            f"the tokenizer has no {', '.join(missing)}: add them with memento.tokenizer.add_memento_tokens "
            "(and init_memento_embeddings for the model), or pass --add-tokens"
        )
    return MementoIds(
        think_start=found[THINK_START],
        think_end=found[THINK_END],
        block_start=found[BLOCK_START],
        block_end=found[BLOCK_END],
        summary_start=found[SUMMARY_START],
        summary_end=found[SUMMARY_END],
    )


def token_ids(tokenizer, tokens) -> list[int | None]:
    """Ids of whole tokens, None where the vocabulary lacks one (cheap: no copy of a 150K-entry vocabulary)."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = tokenizer.unk_token_id
    return [
        None if i is None or (i == unk and t != tokenizer.unk_token) else i for t, i in zip(tokens, ids, strict=True)
    ]


class Labelled(NamedTuple):
    encoded: Encoded
    spans: Spans


def label_trace(trace: Trace, tokenizer, plain: bool = False) -> Labelled:
    """Encode `trace` as a one-turn chat and label every token; `plain`: in the Control format (`render_plain`),
    whose reasoning is labelled as the glue after `<think>` (it has no blocks)."""
    encoded = encode_chat(tokenizer, trace.problem, render_plain(trace) if plain else render(trace))
    return Labelled(encoded, label(encoded.ids, memento_ids(tokenizer), encoded.completion_start))
