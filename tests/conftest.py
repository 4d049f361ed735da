"""Shared fixtures: the real Qwen3 tokenizer, SmolLM2-135M, the paper's example traces (via ../shared), and the toy
character tokenizer with a tiny random Llama over it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED, tiny_model

# Nothing comes from a model or dataset hub here: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_examples() -> Path:
    assert (SHARED / "memento_trace_aime25_p5.json").exists(), (
        f"the paper's example traces are expected at {SHARED} (../shared beside the clone)"
    )
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


@pytest.fixture(scope="session")
def chars():
    """The toy character tokenizer (ChatML and Memento tokens included)."""
    from memento.tokenizer import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="session")
def char_llama(chars):
    """A random 2-layer Llama (d=32, 4 heads, 2 KV heads of 8 dims) over `chars`, in eval mode."""
    return tiny_model(len(chars), hidden=32)
