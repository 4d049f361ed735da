"""Per-family settings of the paper's models, picked from a model's config: what a user would otherwise have to know.

- `qwen3` (model_type qwen3, qwen3_moe, qwen2): Memento ChatML without system prompts (the paper's Qwen3 setting);
  delimiters stay visible after eviction; `memento kv` geometry qwen3-8b.
- `phi4` (phi3, Phi-4-reasoning's architecture; phi): the model's own chat template, system prompt kept (the paper
  kept Phi-4's); delimiters evicted with the block; phi-4-reasoning.
- `olmo3` (olmo3): the model's own chat template; delimiters stay visible; olmo-3-7b-think.
- `default` (anything else): Memento ChatML without system prompts; delimiters stay visible.

The paper evicts the delimiters for Phi-4 (`mask_delimiters=True`) and keeps them for Qwen3 and OLMo-3. A flag given
explicitly (`--mask-delimiters` / `--keep-delimiters`, a recipe's `policy.mask_delimiters`) wins over the preset.
A "native" template falls back to Memento ChatML with system prompts kept when the tokenizer ships none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    name: str
    model_types: tuple[str, ...]
    chat_template: str  # "chatml" (system prompts dropped) or "native" (the tokenizer's own, system prompt kept)
    mask_delimiters: bool
    geometry: str | None  # a `memento kv` preset of the family
    about: str

    def describe(self) -> str:
        delimiters = "evicted with the block" if self.mask_delimiters else "kept visible"
        return f"preset {self.name}: {self.chat_template} chat template, delimiters {delimiters} ({self.about})"


PRESETS = (
    Preset("qwen3", ("qwen3", "qwen3_moe", "qwen2"), "chatml", False, "qwen3-8b", "the paper's Qwen3 setting"),
    Preset("phi4", ("phi3", "phi"), "native", True, "phi-4-reasoning", "the paper's Phi-4-reasoning setting"),
    Preset("olmo3", ("olmo3",), "native", False, "olmo-3-7b-think", "the paper's OLMo-3 setting"),
)
DEFAULT = Preset("default", (), "chatml", False, None, "no family of the paper")


def for_model_type(model_type: str | None) -> Preset:
    return next((p for p in PRESETS if model_type in p.model_types), DEFAULT)


def for_model(model) -> Preset:
    """The preset of a model: a folder (its `config.json`), a Hugging Face config, or a model (its `.config`)."""
    if isinstance(model, str | Path):
        path = Path(model) / "config.json"
        model_type = json.loads(path.read_text()).get("model_type") if path.is_file() else None
        return for_model_type(model_type)
    config = getattr(model, "config", model)
    return for_model_type(getattr(config, "model_type", None))
