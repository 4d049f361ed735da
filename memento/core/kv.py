"""KV-cache accounting: model geometries, a token-replay simulator, and the sawtooth plot.

The simulator replays a labelled token sequence one token at a time under an `EvictionPolicy` and records how many
KV entries each layer holds after every token: the same count an engine that frees evicted KV physically would
measure. Peak and AUC are computed from that timeline, the way the paper computed its Table 1 numbers.

Design choices:
- Bytes per token and layer = 2 (K and V) x kv_heads x head_dim x dtype bytes; Qwen3-8B in bf16 = 144 KiB/token.
- Sliding-window layers (OLMo-3: 24 of 32, window 4096) see a query's `window` newest *held* tokens (the window
  slides over the compacted cache, as in the paper's vLLM release). They hold the `window` newest tokens that no
  eviction can still take, plus every later one (a token behind an evictable block can slide back into the window
  when the block goes); with or without eviction that is about a window, which is why Memento saves little there.
- GB means 10^9 bytes; AUC is integrated over the generated tokens, in GB x thousands of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from memento.core.errors import MementoError
from memento.core.plots import pyplot, save
from memento.core.policy import NEVER, EvictionPolicy, eviction_schedule
from memento.core.spans import Kind, Spans


@dataclass(frozen=True, slots=True)
class KVGeometry:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2
    sliding_layers: int = 0  # how many of `layers` use sliding-window attention
    window: int | None = None
    tokenizer: str | None = None  # "qwen" / "smollm2": the offline tokenizer that counts its tokens

    def __post_init__(self):
        if min(self.layers, self.kv_heads, self.head_dim, self.dtype_bytes) < 1:
            raise MementoError(f"{self.name}: layers, kv_heads, head_dim and dtype_bytes must be positive")
        if not 0 <= self.sliding_layers <= self.layers:
            raise MementoError(f"{self.name}: sliding_layers must be between 0 and layers ({self.layers})")
        if self.sliding_layers and not self.window:
            raise MementoError(f"{self.name}: sliding-window layers need a window size")

    @property
    def layer_bytes_per_token(self) -> int:
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token over all layers, ignoring windows (the number usually quoted)."""
        return self.layers * self.layer_bytes_per_token

    @classmethod
    def from_config(cls, config, name: str = "model") -> KVGeometry:
        """Geometry of a Hugging Face model config (`AutoConfig`); dtype from the config, bf16 if unset."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        layer_types = getattr(text, "layer_types", None) or []
        window = getattr(text, "sliding_window", None)
        sliding = sum(t == "sliding_attention" for t in layer_types) if window else 0
        dtype = str(getattr(text, "dtype", None) or getattr(text, "torch_dtype", None) or "bfloat16")
        dtype_bytes = 4 if "float32" in dtype else 1 if "8" in dtype else 2
        return cls(
            name=name,
            layers=text.num_hidden_layers,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            dtype_bytes=dtype_bytes,
            sliding_layers=sliding,
            window=window if sliding else None,
        )


PRESETS = {
    g.name: g
    for g in (
        KVGeometry("qwen3-8b", layers=36, kv_heads=8, head_dim=128, tokenizer="qwen"),
        KVGeometry("qwen3-32b", layers=64, kv_heads=8, head_dim=128, tokenizer="qwen"),
        KVGeometry("qwen2.5-7b", layers=28, kv_heads=4, head_dim=128, tokenizer="qwen"),
        KVGeometry("phi-4-reasoning", layers=40, kv_heads=10, head_dim=128),
        KVGeometry("olmo-3-7b-think", layers=32, kv_heads=32, head_dim=128, sliding_layers=24, window=4096),
        KVGeometry("smollm2-135m", layers=30, kv_heads=3, head_dim=64, tokenizer="smollm2"),
    )
}


def preset(name: str) -> KVGeometry:
    if name not in PRESETS:
        raise MementoError(f"unknown model preset '{name}': choose one of {', '.join(PRESETS)} or an HF model folder")
    return PRESETS[name]


class Resolved(NamedTuple):
    geometry: KVGeometry
    tokenizer: str  # what counts the tokens: qwen | smollm2 | a model folder
    note: str | None  # said to the user when a stand-in tokenizer counts


def geometry_of(model: str, tokenizer: str | None = None) -> Resolved:
    """The KV geometry of a preset name or a Hugging Face model folder, and the tokenizer that counts its tokens
    (`tokenizer` if given, else the preset's own, else the folder's; Qwen3 stands in for presets without one)."""
    if model in PRESETS or not Path(model).is_dir():
        geometry = preset(model)
        if tokenizer or geometry.tokenizer:
            return Resolved(geometry, tokenizer or geometry.tokenizer, None)
        return Resolved(
            geometry, "qwen", f"no offline tokenizer for {model}; counting tokens with the Qwen3 vocabulary"
        )
    if not (Path(model) / "config.json").is_file():
        raise MementoError(
            f"{model}: no config.json, so not a Hugging Face model folder (its config gives the KV geometry); "
            f"give a model folder or a preset: {', '.join(PRESETS)}"
        )
    from transformers import AutoConfig

    try:
        geometry = KVGeometry.from_config(AutoConfig.from_pretrained(model), name=Path(model).name)
    except (OSError, ValueError) as e:
        raise MementoError(f"{model}: cannot read the model config: {e}") from None
    return Resolved(geometry, tokenizer or model, None)


def average(summaries: list[dict]) -> dict:
    """Mean of per-trace `Comparison.summary()`s; ratios of the means (as the paper's averaged peak-KV table)."""
    n = len(summaries)
    mean = {k: sum(t[k] for t in summaries) / n for k in summaries[0] if not k.endswith("ratio")}
    for k in ("full_peak_bytes", "memento_peak_bytes", "full_peak_tokens", "memento_peak_tokens", "evicted_tokens"):
        mean[k] = round(mean[k])
    mean["peak_ratio"] = mean["full_peak_bytes"] / max(mean["memento_peak_bytes"], 1)
    auc = mean["memento_auc_gb_ktok"]
    mean["auc_ratio"] = mean["full_auc_gb_ktok"] / auc if auc else float("inf")
    return {"n_traces": n, **mean}


def auc_ktok(held) -> float:
    """The KV AUC in token x ktok: the KV tokens held after each generated token, summed, / 1000 (the one
    definition every engine, report and replay uses)."""
    return float(np.sum(held)) / 1e3


def auc_gb_ktok(held_bytes) -> float:
    """The KV AUC in GB x ktok: the bytes held after each generated token, summed, / 1e9 / 1000."""
    return float(np.sum(held_bytes)) / 1e9 / 1e3


class Replay(NamedTuple):
    """KV occupancy of one sequence under one policy; index t = after token t was fed."""

    tokens: np.ndarray  # (T,) live KV entries in a full-attention layer
    bytes: np.ndarray  # (T,) bytes held over all layers
    completion_start: int
    evicted_tokens: int

    @property
    def peak_tokens(self) -> int:
        return int(self.tokens.max(initial=0))

    @property
    def peak_bytes(self) -> int:
        return int(self.bytes.max(initial=0))

    @property
    def auc_gb_ktok(self) -> float:
        return auc_gb_ktok(self.bytes[self.completion_start :])


def _live(start: np.ndarray, end: np.ndarray, n: int) -> np.ndarray:
    """(n,) how many intervals [start, end) cover each index."""
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, start, 1)
    np.add.at(delta, np.minimum(end, n), -1)
    return np.cumsum(delta[:n])


def _sliding(spans: Spans, policy: EvictionPolicy, schedule: np.ndarray, full: np.ndarray, window: int) -> np.ndarray:
    """(n,) tokens the sliding-window layers hold after each token (the engines' `SlotCache.trim`): the `window`
    newest of the tokens held for good (fed before the oldest evictable token still held) and every later one."""
    n = len(spans)
    fed = spans.kind != Kind.PAD
    movable = fed & np.isin(spans.kind, policy.owned) if policy.evicts else np.zeros(n, dtype=bool)
    t = np.arange(n)
    first = np.flatnonzero(movable)
    ends = schedule[first]  # blocks go oldest first: their eviction times never decrease
    if np.any(np.diff(ends) < 0):
        raise MementoError("eviction schedule out of block order")
    oldest = np.searchsorted(ends, t, side="right")  # the oldest evictable token still held after token t
    settled_end = np.where(oldest < len(first), first[np.minimum(oldest, len(first) - 1)], n) if len(first) else n
    settled_end = np.minimum(settled_end, t + 1)
    settled = np.concatenate([[0], np.cumsum(fed & ~movable)])[settled_end]
    return np.minimum(settled, window) + full - settled


def replay(spans: Spans, policy: EvictionPolicy, geometry: KVGeometry, completion_start: int = 0) -> Replay:
    """Replay `spans` token by token under `policy`: the KV each layer holds after every token."""
    n = len(spans)
    schedule = eviction_schedule(spans, policy)
    fed = np.flatnonzero(spans.kind != Kind.PAD)
    end = schedule[fed]
    full = _live(fed, end, n)
    held = full * (geometry.layers - geometry.sliding_layers)
    if geometry.sliding_layers:
        held = held + _sliding(spans, policy, schedule, full, geometry.window) * geometry.sliding_layers
    evicted = int(np.count_nonzero(end != NEVER))
    return Replay(full, held * geometry.layer_bytes_per_token, completion_start, evicted)


class Comparison(NamedTuple):
    full: Replay
    memento: Replay

    def summary(self) -> dict:
        """The CLI's JSON keys (names fixed by DESIGN.md)."""
        f, m = self.full, self.memento
        return {
            "full_peak_bytes": f.peak_bytes,
            "memento_peak_bytes": m.peak_bytes,
            "peak_ratio": f.peak_bytes / max(m.peak_bytes, 1),
            "full_auc_gb_ktok": f.auc_gb_ktok,
            "memento_auc_gb_ktok": m.auc_gb_ktok,
            "auc_ratio": f.auc_gb_ktok / m.auc_gb_ktok if m.auc_gb_ktok else float("inf"),
            "full_peak_tokens": f.peak_tokens,
            "memento_peak_tokens": m.peak_tokens,
            "evicted_tokens": m.evicted_tokens,
        }


def compare(spans: Spans, policy: EvictionPolicy, geometry: KVGeometry, completion_start: int = 0) -> Comparison:
    """Full attention (no eviction) vs `policy` on the same tokens."""
    full = replay(spans, EvictionPolicy(keep_last_n_blocks=-1), geometry, completion_start)
    return Comparison(full, replay(spans, policy, geometry, completion_start))


def plot_sawtooth(comparison: Comparison, path: str | Path, title: str = "") -> Path:
    """PNG of KV held vs generated tokens, full attention vs Memento (the sawtooth)."""
    from memento.core.units import size, unit

    plt = pyplot()
    start = comparison.full.completion_start
    largest = max(comparison.full.peak_bytes, comparison.memento.peak_bytes)
    name_of_unit, scale = unit(largest)  # one unit for the whole figure, the one its largest value reads best in
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for name, rep, style in (("full attention", comparison.full, "--"), ("Memento", comparison.memento, "-")):
        held = rep.bytes[start:] / scale
        ax.plot(np.arange(len(held)), held, style, label=f"{name} (peak {size(rep.peak_bytes, largest)})")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel(f"KV cache ({name_of_unit})")
    ax.set_title(title or "KV cache held during generation")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return save(fig, path)
