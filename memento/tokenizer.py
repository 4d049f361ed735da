"""Give any Hugging Face tokenizer + model the Memento tokens, embeddings for them, and a ChatML template.

Design choices:
- The six tokens are added as *special* tokens, so text never splits them and `skip_special_tokens` hides them.
  `<think>` / `</think>` are reused when the vocabulary has them (Qwen3 does).
- New embedding rows start as the mean of the embeddings of related words plus Gaussian noise (sigma 0.01), the
  paper's recipe, for the input and, when untied, the output embedding. Rows are chosen by token id, and the
  matrix only grows: Qwen checkpoints carry spare rows past the tokenizer, and the new ids land in those.
- Two ChatML templates: one drops system prompts (the paper's Qwen3 setting, the default), one keeps them.
  Completions are tokenized after the prompt, exactly as a model generating them would see them.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from memento.errors import MissingTokensError
from memento.format import (
    BLOCK_END,
    BLOCK_START,
    SPECIAL_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
)
from memento.spans import MementoIds

log = logging.getLogger(__name__)

RELATED_WORDS = {
    BLOCK_START: ("block", "start", "begin", "section", "step"),
    BLOCK_END: ("block", "end", "finish", "section", "done"),
    SUMMARY_START: ("summary", "summarize", "brief", "recap", "overview"),
    SUMMARY_END: ("summary", "end", "finish", "done", "complete"),
    # Our choice for vocabularies without thinking tokens (the paper's models all have them).
    THINK_START: ("think", "reason", "start", "begin", "thought"),
    THINK_END: ("think", "reason", "end", "finish", "done"),
}

_CHATML = (
    "{%- for message in messages -%}"
    "{%- if KEEP or message['role'] != 'system' -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
CHATML_TEMPLATE = _CHATML.replace("KEEP or ", "")  # drops system prompts (the paper's Qwen3 setting)
CHATML_SYSTEM_TEMPLATE = _CHATML.replace("KEEP or ", "true or ")  # keeps them


class Encoded(NamedTuple):
    ids: list[int]  # the whole conversation
    completion_start: int  # index of the first assistant token


def add_memento_tokens(tokenizer, chat_template: str | None = CHATML_TEMPLATE) -> list[str]:
    """Add the Memento special tokens that `tokenizer` lacks and set its chat template; return those added."""
    missing = [t for t, i in zip(SPECIAL_TOKENS, _token_ids(tokenizer, SPECIAL_TOKENS), strict=True) if i is None]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return missing


def memento_ids(tokenizer) -> MementoIds:
    """The ids of the six special tokens; a clear error with the fix when some are missing."""
    found = dict(zip(SPECIAL_TOKENS, _token_ids(tokenizer, SPECIAL_TOKENS), strict=True))
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


def _token_ids(tokenizer, tokens) -> list[int | None]:
    """Ids of whole tokens, None where the vocabulary lacks one (cheap: no copy of a 150K-entry vocabulary)."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = tokenizer.unk_token_id
    return [
        None if i is None or (i == unk and t != tokenizer.unk_token) else i for t, i in zip(tokens, ids, strict=True)
    ]


def related_ids(tokenizer, words) -> list[int]:
    """Token ids of `words`, both as written and with a leading space (how they appear mid-sentence)."""
    ids: list[int] = []
    for word in words:
        for form in (word, " " + word):
            ids += tokenizer.encode(form, add_special_tokens=False)
    return sorted(set(ids))


def init_memento_embeddings(model, tokenizer, tokens=None, sigma: float = 0.01, seed: int = 0) -> dict[str, int]:
    """Grow the embeddings to fit `tokenizer` and initialise `tokens` (default: all six) from related words.

    Returns {token: id} of the rows written. Call after `add_memento_tokens`.
    """
    import torch

    with torch.no_grad():
        return _init_rows(model, tokenizer, tokens, sigma, seed)


def _init_rows(model, tokenizer, tokens, sigma: float, seed: int) -> dict[str, int]:
    import torch

    tokens = list(SPECIAL_TOKENS if tokens is None else tokens)
    size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    generator = torch.Generator().manual_seed(seed)
    written = {}
    for token, row in zip(tokens, _token_ids(tokenizer, tokens), strict=True):
        related = related_ids(tokenizer, RELATED_WORDS[token])
        for weight in matrices:
            mean = weight[related].float().mean(dim=0)
            noise = torch.randn(mean.shape, generator=generator) * sigma
            weight[row] = (mean + noise).to(weight.dtype)
        written[token] = row
    log.info("initialised embeddings of %s", ", ".join(written))
    return written


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


def load_tokenizer(spec: str, add_tokens: bool = True):
    """A tokenizer by name (`qwen`: the Qwen3 vocabulary, `smollm2`, `chars`: the toy one) or Hugging Face folder.

    With `add_tokens`, the Memento tokens are added and the Memento ChatML template set (for counting and encoding;
    a model folder's own template may render assistant turns differently).
    """
    from pathlib import Path

    from memento import assets
    from memento.errors import MementoError

    if spec == "chars":
        from memento.toy.tokenizer import char_tokenizer

        return char_tokenizer()
    if spec == "qwen":
        # Built straight from tokenizer.json: ~1 s, where AutoTokenizer re-derives the BPE model for ~8 s.
        from transformers import PreTrainedTokenizerFast

        folder = assets.qwen_tokenizer_dir()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
    else:
        folder = assets.smollm2_dir() if spec == "smollm2" else Path(spec)
        if not folder.is_dir():
            raise MementoError(
                f"tokenizer '{spec}': not a folder; use qwen, smollm2, chars or a Hugging Face model folder"
            )
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise MementoError(f"{folder}: cannot load a tokenizer: {e}") from None
    if add_tokens:
        add_memento_tokens(tokenizer)  # and the Memento ChatML template, whatever the folder shipped
    return tokenizer
