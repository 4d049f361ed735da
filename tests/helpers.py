"""What several test files share: the paths of the paper's example traces, a small hand-written trace, tiny random
models, and one table of named eviction policies (each test picks its rows by name)."""

from __future__ import annotations

from pathlib import Path

from memento.core.format import Block, Trace
from memento.core.policy import EvictionPolicy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "memento-examples"
AIME_TRACE = SHARED / "memento_trace_aime25_p5.json"
RAW_TRACE = SHARED / "raw_trace_ot3.jsonl"

POLICIES = {
    "keep0": EvictionPolicy(0),
    "keep1": EvictionPolicy(1),
    "keep0-mask-delimiters": EvictionPolicy(0, mask_delimiters=True),
    "keep1-mask-delimiters": EvictionPolicy(1, mask_delimiters=True),
    "keep0-last-block-for-answer": EvictionPolicy(0, keep_last_block_for_answer=True),
    "keep0-restart": EvictionPolicy(0, restart=True),
    "keep1-restart": EvictionPolicy(1, restart=True),
    "keep0-restart-release": EvictionPolicy(0, restart=True, restart_mode="release"),
    "keep1-restart-release": EvictionPolicy(1, restart=True, restart_mode="release"),
    "keep0-max-block-tokens": EvictionPolicy(0, max_block_tokens=40),
    "full": EvictionPolicy(-1),
}


def policies(*names: str) -> dict[str, EvictionPolicy]:
    """The rows `names` of the policy table, in that order."""
    return {name: POLICIES[name] for name in names}


def small_trace(n_blocks: int = 3) -> Trace:
    blocks = [
        Block(f"Step {i}: compute {i} * {i} = {i * i}. Then check it.", f"{i}^2={i * i}") for i in range(n_blocks)
    ]
    return Trace("What is the sum of the first squares?", blocks, "The answer is \\boxed{5}.")


def tiny_model(vocab: int, arch: str = "llama", attention: str = "sdpa", hidden: int = 64, window: int = 16):
    """A random 2-layer model (4 heads of hidden/4 dims, 2 KV heads, MLP 2 x hidden) in eval mode, seeded: `arch`
    llama, qwen3, phi3, or olmo3 (4 layers, sliding windows of `window`)."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Olmo3Config,
        Olmo3ForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=attention,
    )
    if arch == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=hidden // 4)).eval()
    if arch == "phi3":  # Phi-4-reasoning's architecture: fused QKV and gate-up projections
        return Phi3ForCausalLM(Phi3Config(**common, pad_token_id=0)).eval()
    if arch == "olmo3":  # OLMo-3's layout, 4 layers: 3 slide over `window` tokens, the last attends fully
        types = ["sliding_attention"] * 3 + ["full_attention"]
        common["num_hidden_layers"] = 4
        return Olmo3ForCausalLM(Olmo3Config(**common, sliding_window=window, layer_types=types)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()
