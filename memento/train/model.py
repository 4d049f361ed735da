"""Model + tokenizer for training: a pretrained HF folder, the offline SmolLM2, or a random model from a config.

The tokenizer gets the Memento tokens and chat template; the model's embeddings grow to fit and the new rows are
initialised from related words (`tokenizer.init_memento_embeddings`) only when the tokens were new, so resuming or
continuing from a Memento checkpoint keeps its trained rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from memento.core.errors import MementoError
from memento.tokenizer import add_memento_tokens, init_memento_embeddings, load_tokenizer, preset_template

log = logging.getLogger(__name__)


def _folder(name: str) -> Path:
    if name == "smollm2":
        from memento.assets import smollm2_dir

        return smollm2_dir()
    folder = Path(name)
    if not folder.is_dir():
        raise MementoError(f"model '{name}': not a folder; give a Hugging Face model folder, smollm2 or scratch")
    return folder


def load_model(config, weights: Path | None = None):
    """(model, tokenizer) for `config`; `weights`: a checkpoint folder to load instead (resuming)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = config.tokenizer or (None if config.model == "scratch" else config.model)
    if weights is not None:
        source = str(weights)
    if source is None:
        raise MementoError("model: scratch needs a tokenizer (qwen, smollm2, chars or a folder)")
    tokenizer = load_tokenizer(
        source if source in ("qwen", "smollm2", "chars") else str(_folder(source)), add_tokens=False
    )
    preset = config.preset()
    added = add_memento_tokens(tokenizer, chat_template=preset_template(preset, tokenizer))
    log.info("%s; the memento mask: %s", preset.describe(), config.memento_policy())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.attn_implementation == "memento_sdpa":
        from memento.train.attention import register

        register()
    kwargs = dict(attn_implementation=config.attn_implementation)
    if weights is not None:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32, **kwargs)
    elif config.model == "scratch":
        values = dict(config.model_config)
        kind = values.pop("model_type", None)
        if kind is None:
            raise MementoError("model_config: needs model_type (e.g. llama, qwen3)")
        values.setdefault("vocab_size", len(tokenizer))
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **values), **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(_folder(config.model), dtype=torch.float32, **kwargs)
    if added or len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        init_memento_embeddings(model, tokenizer, added or [], seed=config.seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    n = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.1fM parameters, %s attention", type(model).__name__, n / 1e6, config.attn_implementation)
    return model, tokenizer
