"""`MementoScheduler`: vLLM's scheduler with Memento eviction (runs in the EngineCore process).

`num_computed_tokens` stays *logical* (RoPE positions, input-id gathering and stop checks are untouched); what a
request holds physically is `num_computed_tokens - evicted`. Every request's tokens are labelled as they are sampled
(`Row`, the reference engine's bookkeeping); when the tracker says a block goes before the token just sampled is fed,
an `Eviction` is recorded, and applied at the start of the next `schedule()`:
- the survivors fed after the block move down over it (the moves travel to the worker with the step's
  `SchedulerOutput`, as `memento_moves`), and the pages past the last survivor return to vLLM's free pool;
- in restart mode the survivors fed after the block are dropped too and `num_computed_tokens` rolls back to the first
  of them, so vLLM feeds them again, with the new token, over the KV that survives (with
  `extra_args["memento_forget"]`, only at the evictions of the blocks whose text it matches);
- allocations are sized by the physical count, and a resumed request is not required to fit its logical length;
  it is readmitted once the pool can hold the tokens it held when preempted (what its replay rebuilds).

Preemption frees a request's KV; on resumption vLLM prefills its tokens again, and the scheduler cuts that prefill
into chunks that end at each recorded eviction, applying them in turn, so the KV rebuilt is the KV generation had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler

from memento.core.errors import MementoError
from memento.core.policy import forgetter
from memento.engine.reference import Row
from memento.engine.vllm.config import LIVE, check_supported, request_forget, request_policy, settings

log = logging.getLogger(__name__)


@dataclass
class Eviction:
    trigger: int  # logical index of the token that must not see the block: applied when it is the next to feed
    gone: np.ndarray  # logical indices of the evicted tokens
    redo_from: int | None  # restart mode: survivors from here to `trigger` are recomputed


@dataclass
class Track:
    """One request's Memento state."""

    row: Row  # labels of every token so far (the reference engine's bookkeeping)
    events: list[Eviction] = field(default_factory=list)
    applied: int = 0  # events reflected in the KV the request holds now
    evicted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted logical indices
    peak: int = 0  # most tokens held at once
    held: int = 0  # tokens held after the last step
    resume: int = 0  # tokens held when last preempted: its replay rebuilds that many

    def stats(self, request) -> dict:
        return {
            "blocks": self.row.labeller.index + 1,
            "evictions": len(self.events),
            "evicted_tokens": int(sum(len(e.gone) for e in self.events)),
            "forgotten": self.row.forgotten,
            "peak_kv_tokens": self.peak,
            "final_kv_tokens": self.held,
            "preemptions": request.num_preemptions,
            "request_id": request.request_id,  # the label of its live gauges on /metrics
        }

    @property
    def pending(self) -> Eviction | None:
        return self.events[self.applied] if self.applied < len(self.events) else None


def _full_attention(spec) -> bool:
    """Pages that vLLM frees only when the request ends (the extension frees and compacts them itself)."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MLAAttentionSpec, RSWASpec, UniformTypeKVCacheSpecs

    if isinstance(spec, UniformTypeKVCacheSpecs):
        return all(_full_attention(s) for s in spec.kv_cache_specs.values())
    return isinstance(spec, FullAttentionSpec) and not isinstance(spec, RSWASpec | MLAAttentionSpec)


class MementoScheduler(Scheduler):
    def __init__(self, vllm_config, *args, **kwargs):
        check_supported(vllm_config)
        if vllm_config.cache_config.enable_prefix_caching:
            log.warning("memento: prefix caching turned off (a cached page could hold KV that eviction frees)")
            vllm_config.cache_config.enable_prefix_caching = False
        super().__init__(vllm_config, *args, **kwargs)
        self.memento = settings(vllm_config)
        groups = self.kv_cache_config.kv_cache_groups
        if len(groups) != 1:
            raise MementoError(
                f"memento on vLLM needs one KV cache group, got {len(groups)}: start vLLM with "
                "disable_hybrid_kv_cache_manager=True (`engine_args` sets it; "
                "`vllm serve --disable-hybrid-kv-cache-manager`)"
            )
        if not _full_attention(groups[0].kv_cache_spec):
            kind = type(groups[0].kv_cache_spec).__name__
            raise MementoError(
                f"memento on vLLM needs full-attention KV pages, got {kind}: vLLM would free a sliding window's pages "
                "by position, losing tokens a compaction moved (models whose every layer slides are not handled yet)"
            )
        self.page = groups[0].kv_cache_spec.block_size
        self.tokenizer = None  # loaded for the first request with `memento_forget` (it matches a block's text)
        self.tracks: dict[str, Track] = {}
        self.moves: dict[str, list[tuple[list[int], list[int], int]]] = {}  # per step: src, dst slots, pages kept
        allocate = self.kv_cache_manager.allocate_slots

        def allocate_slots(request, num_new_tokens, *args, **kwargs):
            """vLLM sizes a request's pages by `num_computed_tokens + new`: make that the physical count."""
            track = self.tracks.get(request.request_id)
            evicted = len(track.evicted) if track is not None else 0
            if track is not None and track.events:
                kwargs["full_sequence_must_fit"] = False  # a resumed request never holds its logical length
                if request.num_computed_tokens == 0 and self._free_pages() < -(-track.resume // self.page):
                    return None  # resume once the KV it held fits: readmitted earlier, it would be preempted again
            if not evicted:
                return allocate(request, num_new_tokens, *args, **kwargs)
            request.num_computed_tokens -= evicted
            try:
                return allocate(request, num_new_tokens, *args, **kwargs)
            finally:
                request.num_computed_tokens += evicted

        self.kv_cache_manager.allocate_slots = allocate_slots

    def _free_pages(self) -> int:
        return self.kv_cache_manager.block_pool.get_num_free_blocks()

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def _track(self, request) -> Track:
        track = self.tracks.get(request.request_id)
        if track is None:
            prompt = list(request.prompt_token_ids or [])
            policy = request_policy(self.memento.policy, request.sampling_params)
            track = Track(Row.start(prompt, self.memento.special, policy, forget=self._forget(request)))
            for trigger, block in track.row.prompt_evictions:  # compact_prompt: blocks of earlier turns
                self._record(track, trigger, block)
            self.tracks[request.request_id] = track
        return track

    def _forget(self, request):
        """The request's selective-forgetting rule (`extra_args["memento_forget"]`), None without one."""
        regex = request_forget(request.sampling_params)
        if regex is None:
            return None
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            model = self.vllm_config.model_config
            self.tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, revision=model.tokenizer_revision)
        tokenizer = self.tokenizer
        return forgetter(regex, lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

    @staticmethod
    def _record(track: Track, trigger: int, block: int) -> None:
        """Record that `block` goes before the token at `trigger` is fed."""
        row = track.row
        gone = row.block_tokens(block).numpy()
        if not len(gone):
            return
        start = row.recompute_from(block, trigger, int(gone.min()))
        redo = None if start is None or start >= trigger else max(start, int(gone.max()) + 1)
        track.events.append(Eviction(trigger=trigger, gone=gone, redo_from=redo))

    def _label(self, request) -> None:
        """Label the tokens sampled since the last call; record the evictions they trigger."""
        track = self._track(request)
        row, tokens = track.row, request.all_token_ids
        while len(row.ids) < len(tokens):
            t = len(row.ids)
            block = row.add(tokens[t])
            if block is not None:
                self._record(track, t, block)

    def _apply(self, request, track: Track) -> None:
        """Apply the pending eviction of a request whose next token to feed is its trigger."""
        event = track.pending
        computed = request.num_computed_tokens
        manager = self.kv_cache_manager.coordinator.single_type_managers[0]
        pages = manager.req_to_blocks[request.request_id]
        before = np.setdiff1d(np.arange(computed), track.evicted, assume_unique=True)  # physical order
        evicted = np.union1d(track.evicted, event.gone)
        drop = evicted if event.redo_from is None else np.union1d(evicted, np.arange(event.redo_from, computed))
        keep = np.isin(before, drop, invert=True)
        old = np.flatnonzero(keep)  # physical slots of the survivors, before ...
        new = np.arange(len(old))  # ... and after compaction
        moved = old != new
        page_ids = np.array([p.block_id for p in pages], dtype=np.int64)

        def slot(i):
            return page_ids[i // self.page] * self.page + i % self.page

        need = -(-len(old) // self.page)
        step = (slot(old[moved]).tolist(), slot(new[moved]).tolist(), need)
        self.moves.setdefault(request.request_id, []).append(step)
        if need < len(pages):
            tail = pages[need:]
            del pages[need:]
            self.kv_cache_manager.block_pool.free_blocks(reversed(tail))
        track.evicted = evicted
        track.applied += 1
        if event.redo_from is not None:
            request.num_computed_tokens = event.redo_from

    # -- vLLM hooks ----------------------------------------------------------------------------------------------

    def schedule(self, *args, **kwargs):
        self.moves = {}
        for request in self.running:
            track = self.tracks.get(request.request_id)
            while track is not None and track.pending and track.pending.trigger == request.num_computed_tokens:
                self._apply(request, track)
        out = super().schedule(*args, **kwargs)
        out.memento_moves = self.moves
        out.memento_evicted = {
            rid: len(track.evicted) for rid, track in self.tracks.items() if len(track.evicted) or rid in self.moves
        }
        return out

    def _reserve_prefill_lookahead(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        """A prefill stops at the next recorded eviction, which is applied before the rest is fed: a replay after
        preemption, or a prompt whose blocks are compacted (`compact_prompt`)."""
        n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        track = self._track(request)  # made here, before the first chunk, which a compacted prompt's eviction cuts
        if track is not None and track.pending is not None and track.pending.trigger > num_computed_tokens:
            n = min(n, track.pending.trigger - num_computed_tokens)
        return n

    def _preempt_request(self, request, *args, **kwargs) -> None:
        super()._preempt_request(request, *args, **kwargs)
        track = self.tracks.get(request.request_id)
        if track is not None:  # all its KV is gone; resumption replays the evictions
            track.resume = track.held
            track.applied, track.evicted = 0, np.zeros(0, dtype=np.int64)
            self.moves.pop(request.request_id, None)

    def update_from_output(self, scheduler_output, model_runner_output):
        for rid in scheduler_output.num_scheduled_tokens:  # the step's tokens are fed: count what is held
            request = self.requests.get(rid)
            if request is not None:
                track = self._track(request)
                held = request.num_computed_tokens - len(track.evicted)
                track.peak, track.held = max(track.peak, held), held
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for rid in scheduler_output.num_scheduled_tokens:  # label what was sampled (finished requests are gone)
            request = self.requests.get(rid)
            if request is not None:
                self._label(request)
        for batch in outputs.values():  # what each running request holds now, for the live gauges of /metrics
            for output in batch.outputs:
                track = self.tracks.get(output.request_id)
                if output.finish_reason is None and output.kv_transfer_params is None and track is not None:
                    output.kv_transfer_params = {LIVE: {"held": track.held, "peak": track.peak}}
        return outputs

    def _free_request(self, request, *args, **kwargs):
        """The request's KV statistics reach the client as `kv_transfer_params["memento"]` (vLLM passes that field
        through to `RequestOutput` and to the OpenAI responses)."""
        params, *rest = super()._free_request(request, *args, **kwargs)
        track = self.tracks.pop(request.request_id, None)
        if track is not None:
            params = {**(params or {}), "memento": track.stats(request)}
        return (params, *rest)
