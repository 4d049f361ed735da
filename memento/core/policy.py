"""The one `EvictionPolicy`, and the eviction schedule it implies for a labelled sequence.

The schedule answers, for every token, "which is the first query that no longer sees this token's KV?". The
training mask (`visible[q, k] = k <= q < evicted_at[k]`), the engines (free token k's KV just before feeding
token `evicted_at[k]`) and the KV simulator (occupancy = tokens fed and not yet evicted) all read it, so they agree
by construction.

Rules (keep_last_n_blocks = N >= 0):
- Block i's content is evicted when `<|summary_end|>` of block i + N is *sampled*, before that token is fed: the
  `<|summary_end|>` token itself does not see the evicted block.
- `mask_delimiters`: the block's `<|block_start|>` and `<|block_end|>` (and the newline after it) go with it;
  otherwise they stay visible (the paper's Qwen3 / OLMo-3 setting). Memento delimiters always stay.
- `keep_last_block_for_answer` (N = 0): the last block stays visible to `</think>` and the answer. Which block is
  last is only known when `</think>` is sampled, so block i is evicted when the next `<|block_start|>` is sampled
  instead of at its own `<|summary_end|>`. With N >= 1 the last N blocks survive anyway.
- `restart` evicts on the same schedule and, in addition, recomputes KV without the evicted block (the engines and
  masks read the flag); the KV occupancy is the same. Two modes:
  - `restart_mode="strict"` (ours): every surviving token fed after the block is recomputed, so no retained KV was
    computed while the block was visible; delimiters follow `mask_delimiters`.
  - `restart_mode="release"` (the paper's release): both block delimiters always go with the block, and only the
    newest memento is recomputed (from its `<|summary_start|>` up to the trigger); with keep N > 0 the blocks and
    mementos between keep the KV they computed while the evicted block was visible. The paper's -15.3 points for
    restart were measured this way. `recompute_from` gives where each mode starts.
- Selective strict forgetting (`forget`, a per-request regular expression, not a policy field): only the blocks
  whose text it matches (`re.search` on the block's decoded content, when the block is evicted) get restart's
  recomputation, in `restart_mode`; the others keep the KV computed while they were visible. It applies whether or
  not `restart` is set (with `restart`, it narrows restart to the matching blocks), and it changes only what is
  recomputed, never what is evicted or when (the release's mode still takes every block's delimiters).
- `max_block_tokens` / `max_blocks` steer generation (force `<|block_end|>` / `</think>`), not eviction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from memento.core.errors import MementoError
from memento.core.spans import Kind, MementoIds, Spans

NEVER = np.iinfo(np.int64).max  # "not evicted within this sequence"
RESTART_MODES = ("strict", "release")


@dataclass(frozen=True, slots=True)
class EvictionPolicy:
    keep_last_n_blocks: int = 0  # -1: keep everything (plain decoding); 0: evict each block; N: keep the last N
    mask_delimiters: bool = False
    keep_last_block_for_answer: bool = False
    restart: bool = False
    restart_mode: str = "strict"  # strict (ours) | release (the paper's release); read only with restart
    max_block_tokens: int | None = None
    max_blocks: int | None = None
    compact_prompt: bool = False  # evict the blocks already in the prompt (earlier turns of a multi-turn chat)

    def __post_init__(self):
        if self.keep_last_n_blocks < -1:
            got = self.keep_last_n_blocks
            raise MementoError(f"keep_last_n_blocks must be -1 (no eviction), 0 or N > 0, got {got}")
        if not self.evicts:
            for flag in ("mask_delimiters", "keep_last_block_for_answer", "restart", "compact_prompt"):
                if getattr(self, flag):
                    raise MementoError(f"{flag} needs eviction, but keep_last_n_blocks is -1 (no eviction)")
        if self.restart_mode not in RESTART_MODES:
            raise MementoError(f"restart_mode must be one of {', '.join(RESTART_MODES)}, got '{self.restart_mode}'")
        if self.restart_mode != "strict" and not self.restart:
            raise MementoError(f"restart_mode {self.restart_mode} needs restart")
        for name in ("max_block_tokens", "max_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MementoError(f"{name} must be a positive integer or unset, got {value}")

    @property
    def evicts(self) -> bool:
        return self.keep_last_n_blocks >= 0

    @property
    def delimiters_go(self) -> bool:
        """Whether a block's delimiters are evicted with it (`mask_delimiters`, or the release's restart mode)."""
        return self.mask_delimiters or (self.restart and self.restart_mode == "release")

    @property
    def owned(self) -> tuple[Kind, ...]:
        """The kinds of a block's tokens that its eviction frees."""
        return (Kind.BLOCK, Kind.BLOCK_START, Kind.BLOCK_END) if self.delimiters_go else (Kind.BLOCK,)

    def recompute_from(self, kinds, trigger: int, first_gone: int, restart: bool | None = None) -> int | None:
        """Restart mode: the first sequence index whose KV is recomputed when an eviction triggers at `trigger`
        (`first_gone`: the first evicted index); None without restart. `kinds`: the labels of the tokens so far.
        Strict: everything after the block's first token; release: from the newest `<|summary_start|>`.
        `restart`: whether this eviction restarts (selective forgetting: its block matched `forget`); None: the
        policy's `restart`."""
        if not (self.restart if restart is None else restart):
            return None
        if self.restart_mode == "strict":
            return first_gone + 1
        starts = [i for i in range(trigger - 1, -1, -1) if kinds[i] == Kind.SUMMARY_START]
        return starts[0] if starts else trigger

    @classmethod
    def named(cls, name: str, **flags) -> EvictionPolicy:
        """`full` (no eviction) or `keepN` (keep the last N finished blocks, `keep0` = the paper's default)."""
        match = re.fullmatch(r"keep(\d+)", name)
        if name == "full":
            return cls(keep_last_n_blocks=-1, **flags)
        if match is None:
            raise MementoError(f"unknown policy '{name}': use full, keep0, keep1 or keepN with N a number")
        return cls(keep_last_n_blocks=int(match.group(1)), **flags)


Forget = Callable[[list[int]], bool]  # a block's content token ids -> whether to forget it strictly


def forget_pattern(regex: str, option: str = "forget") -> re.Pattern:
    """`regex` compiled, or a `MementoError` naming `option` with the compiler's complaint."""
    if not isinstance(regex, str):
        raise MementoError(f"{option} must be a regular expression (a string), got {type(regex).__name__}")
    try:
        return re.compile(regex)
    except re.error as e:
        raise MementoError(f"{option}: not a valid regular expression ({e})") from e


def forgetter(regex: str, decode: Callable[[list[int]], str], option: str = "forget") -> Forget:
    """Selective strict forgetting: a block is forgotten when `regex` is found (`re.search`) in its decoded content
    (the text between its delimiters)."""
    pattern = forget_pattern(regex, option)
    return lambda ids: pattern.search(decode(ids)) is not None


def eviction_schedule(spans: Spans, policy: EvictionPolicy) -> np.ndarray:
    """(T,) int64: index of the first query that no longer sees each token; NEVER if none in the sequence."""
    out = np.full(len(spans), NEVER, dtype=np.int64)
    if not policy.evicts:
        return out
    n = spans.n_blocks
    triggers = np.full(n, -1, dtype=np.int64)  # when block i goes, -1: not (yet) in this sequence
    keep = policy.keep_last_n_blocks
    if keep == 0 and policy.keep_last_block_for_answer:
        triggers[: n - 1] = spans.first(Kind.BLOCK_START)[1:]
    else:
        triggers[: max(n - keep, 0)] = spans.first(Kind.SUMMARY_END)[keep:]
    evictable = np.isin(spans.kind, policy.owned)
    idx = np.flatnonzero(evictable)
    when = triggers[spans.block[idx]]
    out[idx[when >= 0]] = when[when >= 0]
    return out


def visible(schedule: np.ndarray, pad: np.ndarray | None = None) -> np.ndarray:
    """(T, T) bool: query q sees key k. The slow, obviously-correct form of the Memento attention rule."""
    n = len(schedule)
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    mask = (k <= q) & (q < schedule[None, :])
    if pad is not None:
        mask &= ~pad[None, :]
    return mask


class EvictionTracker:
    """The engines' side of `eviction_schedule`: fed the label of each token *before* the token is fed to the model,
    it says which block's KV to free now. `tests/test_engine.py` checks it against the schedule."""

    def __init__(self, policy: EvictionPolicy, special: MementoIds):
        self.policy = policy
        self.special = special
        self.finished: list[int] = []  # blocks whose memento is closed, oldest first
        self.deferred = policy.keep_last_n_blocks == 0 and policy.keep_last_block_for_answer
        self.owned = policy.owned

    def on_token(self, token: int, kind: Kind, block: int) -> int | None:
        """The block to evict before feeding `token`, labelled (kind, block), or None."""
        if not self.policy.evicts:
            return None
        if kind == Kind.SUMMARY_END and token == self.special.summary_end:
            self.finished.append(block)
            if not self.deferred and len(self.finished) > self.policy.keep_last_n_blocks:
                return self.finished[-1 - self.policy.keep_last_n_blocks]
        if self.deferred and kind == Kind.BLOCK_START and token == self.special.block_start and self.finished:
            return self.finished[-1]
        return None
