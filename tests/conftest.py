"""Shared fixtures: the real Qwen3 tokenizer, SmolLM2-135M, the paper's example traces (via ../shared), and the toy
character tokenizer with a tiny random Llama over it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memento.core.format import Block, Trace

# Nothing comes from a model or dataset hub here: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "memento-examples"
AIME_TRACE = SHARED / "memento_trace_aime25_p5.json"
RAW_TRACE = SHARED / "raw_trace_ot3.jsonl"


@pytest.fixture(scope="session")
def shared_examples() -> Path:
    assert AIME_TRACE.exists(), f"the paper's example traces are expected at {SHARED} (../shared beside the clone)"
    return SHARED


@pytest.fixture(scope="session")
def qwen():
    """The Qwen3 vocabulary as an HF tokenizer, with the Memento tokens and the ChatML template."""
    from memento.tokenizer import load_tokenizer

    return load_tokenizer("qwen")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from memento.assets import smollm2_dir

    return smollm2_dir()


def small_trace(n_blocks: int = 3) -> Trace:
    blocks = [
        Block(f"Step {i}: compute {i} * {i} = {i * i}. Then check it.", f"{i}^2={i * i}") for i in range(n_blocks)
    ]
    return Trace("What is the sum of the first squares?", blocks, "The answer is \\boxed{5}.")


@pytest.fixture(scope="session")
def chars():
    """The toy character tokenizer (ChatML and Memento tokens included)."""
    from memento.tokenizer import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="session")
def char_llama(chars):
    """A random 2-layer Llama (d=32, 4 heads, 2 KV heads of 8 dims) over `chars`, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(chars), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)  # fmt: skip
    return LlamaForCausalLM(config).eval()
