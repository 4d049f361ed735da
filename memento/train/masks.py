"""Attention masks for training: plain causal (stage 1) and the Memento rule (stage 2), in three forms.

Every form reads the eviction schedule of `memento.core.policy` (for each token, the first query that no longer
sees it), so training sees exactly what the engines leave in the cache:

- `reference_mask`: numpy, one sequence, built by simulating an engine that frees cache entries as it reads the
  tokens. Slow and obviously correct; the test oracle for the other two.
- `dense_mask`: torch bool (B, 1, T, T), True = attend, for SDPA on CPU or GPU. Memory grows as T^2, fine for
  short sequences; long ones want the FlexAttention form.
- `flex_block_mask`: a FlexAttention `BlockMask` (CUDA only: FlexAttention's backward does not run on CPU).

Restart mode changes what the *cache* holds after an eviction: tokens that saw the evicted block are recomputed
without it. Strict (ours): every surviving token fed after the block is; as a mask, a query never sees a key that is
evicted before the query itself is, i.e. `schedule[k] >= schedule[q]`. Release (the paper's release): only the
newest memento is; as a mask, a query last recomputed at trigger t (`redo[q] = t`, `recompute_triggers`) sees only
the keys still held after t (`schedule[k] > t`). With keep_last_n_blocks = 0 both are "memento tokens cannot see
their block"; a forward under either equals restart decoding at every position except the queries of the memento
being written, which were sampled while their block was still there.

Selective strict forgetting (only some blocks get restart's recomputation, `forget` per sequence) is the same `redo`
rule: `recompute_triggers(..., forget=...)` gives each query the last trigger that recomputed it.

Padding: padded keys are never seen; padded queries see only themselves (an all-False row would make SDPA return
NaN). Their labels are -100, so they never reach the loss.
"""

from __future__ import annotations

import numpy as np
import torch

from memento.core.errors import MementoError
from memento.core.mask import attention_implementation, for_model, sliding_window, within_window
from memento.core.policy import NEVER, EvictionPolicy, eviction_schedule
from memento.core.spans import Kind, Spans

MASK_KINDS = ("causal", "memento")


def reference_mask(
    ids, spans: Spans, summary_end: int, block_start: int, policy: EvictionPolicy, forget: set[int] | None = None
) -> np.ndarray:
    """(T, T) bool for one sequence: row q = the keys a decoding engine holds when it feeds token q.

    The engine keeps a list of finished blocks and drops a block's entries when the token that triggers it is
    sampled (before that token is fed); in restart mode the surviving rows are recomputed without what was dropped.
    `forget`: the blocks forgotten strictly (selective forgetting; None: the policy's restart).
    """
    n = len(ids)
    alive = np.zeros(n, bool)
    views = np.zeros((n, n), bool)
    finished: list[int] = []
    own = list(policy.owned)
    deferred = policy.keep_last_n_blocks == 0 and policy.keep_last_block_for_answer

    def evict(block: int, now: int) -> None:
        gone = (spans.block == block) & np.isin(spans.kind, own)
        alive[gone] = False
        if not gone.any():
            return
        restart = None if forget is None else block in forget
        start = policy.recompute_from(spans.kind, now, int(np.flatnonzero(gone).min()), restart)
        if start is not None:
            survivors = np.flatnonzero(alive[:now])
            survivors = survivors[survivors >= start]
            views[survivors] &= alive[None, :]

    for t in range(n):
        if spans.kind[t] == Kind.PAD:
            views[t, t] = True
            continue
        if policy.evicts and ids[t] == summary_end and spans.kind[t] == Kind.SUMMARY_END:
            finished.append(int(spans.block[t]))
            if not deferred and len(finished) > policy.keep_last_n_blocks:
                evict(finished[-1 - policy.keep_last_n_blocks], t)
        if policy.evicts and deferred and ids[t] == block_start and spans.kind[t] == Kind.BLOCK_START and finished:
            evict(finished[-1], t)
        alive[t] = True
        views[t] = alive
    return views


def schedules(spans: list[Spans], policy: EvictionPolicy | None, length: int) -> torch.Tensor:
    """(B, T) int64: eviction schedule of each sequence, right-padded to `length` (padding: never evicted).

    `policy=None` is plain causal attention (nothing is ever evicted).
    """
    out = torch.full((len(spans), length), NEVER, dtype=torch.int64)
    if policy is None or not policy.evicts:
        return out
    for row, s in enumerate(spans):
        out[row, : len(s)] = torch.from_numpy(eviction_schedule(s, policy))
    return out


def recompute_triggers(
    spans: list[Spans], policy: EvictionPolicy | None, length: int, forget: list[set[int]] | None = None
) -> torch.Tensor | None:
    """(B, T) int64: the last trigger at which each token's KV is recomputed (-1: never), right-padded to `length`,
    for the release's restart mode or for selective strict forgetting; None for any other policy (strict restart of
    every block needs only the schedule).

    `forget[b]`: the blocks of sequence b (0-based, as in `Spans.block`) forgotten strictly, in the policy's
    `restart_mode`, whether or not the policy has `restart`; the other blocks are evicted normally."""
    if forget is None and (policy is None or not policy.restart or policy.restart_mode != "release"):
        return None
    if policy is None or not policy.evicts:
        raise MementoError("forget needs a policy that evicts blocks")
    if forget is not None and len(forget) != len(spans):
        raise MementoError(f"forget: {len(forget)} sets of blocks for {len(spans)} sequences")
    out = torch.full((len(spans), length), -1, dtype=torch.int64)
    for row, s in enumerate(spans):
        schedule = eviction_schedule(s, policy)
        for trigger in np.unique(schedule[schedule != NEVER]).tolist():
            gone = np.flatnonzero(schedule == trigger)
            restart = None if forget is None else int(s.block[gone[0]]) in forget[row]
            start = policy.recompute_from(s.kind, trigger, int(gone.min()), restart)
            if start is not None:
                redo = np.arange(start, trigger)
                out[row, redo[schedule[redo] > trigger]] = trigger  # the survivors; later triggers overwrite
    return out


def dense_mask(
    schedule: torch.Tensor, pad: torch.Tensor, restart: bool = False, redo: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, 1, T, T) bool, True = attend. `schedule`: (B, T) int64; `pad`: (B, T) bool, True at padding; `redo`:
    (B, T) the last trigger recomputing each query (`recompute_triggers`: the release's restart mode, or selective
    forgetting), read whenever given; else strict restart of every block when `restart`."""
    n = schedule.shape[1]
    pos = torch.arange(n, device=schedule.device)
    q = pos[None, :, None]  # (1, T, 1)
    k = pos[None, None, :]  # (1, 1, T)
    sk = schedule[:, None, :]  # (B, 1, T): per key
    mask = (k <= q) & (q < sk) & ~pad[:, None, :] & ~pad[:, :, None]
    if redo is not None:
        mask &= sk > redo[:, :, None]
    elif restart:
        mask &= sk >= schedule[:, :, None]
    mask |= (q == k) & pad[:, :, None]
    return mask[:, None]


def flex_block_mask(
    schedule: torch.Tensor, pad: torch.Tensor, restart: bool = False, redo=None, window: int | None = None
) -> object:
    """A FlexAttention `BlockMask` of the same rule as `dense_mask` (needs CUDA for training); `window`: the sliding
    layers' (`within_window`)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, n = schedule.shape
    rule = mask_mod(schedule, pad, restart, redo, window)
    return create_block_mask(rule, B=b, H=None, Q_LEN=n, KV_LEN=n, device=schedule.device, BLOCK_SIZE=128)


def held_tables(schedule: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a sliding-window `mask_mod` needs to count held tokens without a T x T tensor. Between two eviction
    times a query sees the same set of earlier tokens, so per such epoch e: `held[b, e, x]` = tokens before index x
    still held, and `epoch[b, q]` = the epoch of query q. Returns (held (B, E+1, T+1) int32, epoch (B, T) int64)."""
    b, n = schedule.shape
    times = [torch.unique(row[row != NEVER]) for row in schedule]
    m = max((len(t) for t in times), default=0)
    tau = torch.full((b, m + 1), -1, dtype=torch.int64, device=schedule.device)  # epoch 0: before any eviction
    for row, t in enumerate(times):
        tau[row, 1 : len(t) + 1] = t
        tau[row, len(t) + 1 :] = NEVER
    alive = (schedule[:, None, :] > tau[:, :, None]) & ~pad[:, None, :]  # (B, E+1, T)
    held = torch.nn.functional.pad(alive.cumsum(-1, dtype=torch.int32), (1, 0))
    q = torch.arange(n, device=schedule.device).expand(b, n).contiguous()
    epoch = torch.searchsorted(tau[:, 1:].contiguous(), q, right=True)
    return held, epoch


def mask_mod(
    schedule: torch.Tensor, pad: torch.Tensor, restart: bool = False, redo: torch.Tensor | None = None, window=None
):
    """The FlexAttention `mask_mod(b, h, q, k)` of the Memento rule (usable with `create_mask` on any device);
    `window`: cut to a sliding layer's window of held tokens (not with restart or `redo`: there the tokens a
    recomputed query sees do not follow from its epoch)."""
    if window is not None and (restart or redo is not None):
        raise MementoError("the FlexAttention mask of sliding-window layers does not cover restart mode; use sdpa")
    if window is not None:
        held, epoch = held_tables(schedule, pad)

    def rule(b, h, q, k):
        sk = schedule[b, k]
        seen = (k <= q) & (q < sk) & ~pad[b, k] & ~pad[b, q]
        if redo is not None:
            seen = seen & (sk > redo[b, q])
        elif restart:
            seen = seen & (sk >= schedule[b, q])
        if window is not None:
            e = epoch[b, q]
            seen = seen & (held[b, e, q + 1] - held[b, e, k] <= window)
        return seen | ((q == k) & pad[b, q])

    return rule


def model_mask(model, schedule: torch.Tensor, pad: torch.Tensor, restart: bool = False, redo=None):
    """The Memento mask in the form `model`'s attention implementation reads correctly, or a clear error.

    flex_attention gets a BlockMask and is refused on CPU, where its backward does not run; sdpa and eager get the
    dense mask through `for_model`. `redo` (`recompute_triggers`, e.g. the batch's "redo" with selective forgetting)
    takes precedence over `restart`. A model with sliding-window layers (OLMo-3) gets one mask per layer type, as
    transformers takes them: the sliding layers' is the Memento mask cut to the window of held tokens (`within_window`).
    """
    window = sliding_window(model)
    if attention_implementation(model) == "flex_attention":
        if schedule.device.type != "cuda":
            raise MementoError(
                "flex_attention needs CUDA (its backward does not run on CPU); use attn_implementation=sdpa"
            )
        full = flex_block_mask(schedule, pad, restart, redo)
        if window is None:
            return full
        return {"full_attention": full, "sliding_attention": flex_block_mask(schedule, pad, restart, redo, window)}
    dense = dense_mask(schedule, pad, restart, redo)
    if window is None:
        return for_model(model, dense)
    sliding = for_model(model, within_window(dense, window))
    return {"full_attention": for_model(model, dense), "sliding_attention": sliding}
