"""A character-level Hugging Face tokenizer for toy models: printable ASCII + newline, ChatML and Memento tokens.

A standard `PreTrainedTokenizerFast` (saved and loaded like any other), so toy runs go through exactly the code
paths real models use; its ~110-token vocabulary keeps a tiny model's output layer small enough to train on a CPU.
"""

from __future__ import annotations

import string

from memento.format import SPECIAL_TOKENS

CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARS = "\n" + "".join(c for c in string.printable if c.isprintable())


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from memento.tokenizer import add_memento_tokens

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
