"""`MementoWorker`: vLLM's worker with Memento's physical KV layout (runs in the worker process).

The scheduler sends, with each step, the token moves that compact evicted requests (`memento_moves`, slot ids) and
how many tokens each request has evicted (`memento_evicted`). Before the step runs, the worker moves the K/V of
those slots in every layer and truncates the request's block table to the pages it still owns; after vLLM computed
the step's inputs, it rewrites the slot mapping and sequence lengths from logical to physical (`position - evicted`)
and leaves the positions logical, so RoPE sees the original positions while attention reads the compacted cache.

Moving a token needs to know where its K and V live inside a page, and that layout belongs to the attention backend
(the CPU kernels store keys transposed, per ISA). `KVMover` learns it once per layer by asking the backend's own
cache-write op to store numbered values into a scratch page, so any backend that writes through
`do_kv_cache_update` works without layout code here.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from vllm.platforms import current_platform

from memento.core.errors import MementoError
from memento.engine.vllm.config import check_supported, settings

if current_platform.is_cpu():
    from vllm.v1.worker.cpu_worker import CPUWorker as _Base
else:
    from vllm.v1.worker.gpu_worker import Worker as _Base

log = logging.getLogger(__name__)
BASE = 8  # digits 1..8 are exact in every float type a KV cache uses


class KVMover:
    """Moves tokens between slots (`page * page_size + offset`) in every attention layer's paged KV cache."""

    def __init__(self, runner):
        self.layers = []  # (storage view, offsets (page_size, elements), page stride, base offset)
        context = runner.compilation_config.static_forward_context
        num_pages = runner.kv_cache_config.num_blocks
        calibrated: dict[tuple, torch.Tensor] = {}
        seen: set[tuple] = set()  # layers sharing one KV tensor are moved once
        for name, layer in context.items():
            kv = getattr(layer, "kv_cache", None)
            if not isinstance(kv, torch.Tensor) or kv.numel() == 0 or not hasattr(layer, "impl"):
                continue
            dims = [d for d, n in enumerate(kv.shape) if n == num_pages]
            if not dims:
                raise MementoError(f"memento: cannot find the page dimension of {name}'s KV cache {tuple(kv.shape)}")
            page_dim = dims[0]
            where = (kv.untyped_storage().data_ptr(), kv.storage_offset(), tuple(kv.shape), kv.stride())
            if where in seen:
                continue
            seen.add(where)
            key = (tuple(kv.shape), kv.stride(), kv.dtype, type(layer.impl), page_dim)
            if key not in calibrated:
                calibrated[key] = self._calibrate(layer, kv, page_dim)
            flat = torch.empty(0, dtype=kv.dtype, device=kv.device)
            flat.set_(kv.untyped_storage(), 0, (kv.untyped_storage().nbytes() // kv.element_size(),), (1,))
            self.layers.append((flat, calibrated[key], kv.stride(page_dim), kv.storage_offset()))
        if not self.layers:
            raise MementoError("memento: the model runner has no attention layer with a KV cache")
        self.page = self.layers[0][1].shape[0]

    @staticmethod
    def _calibrate(layer, kv: torch.Tensor, page_dim: int) -> torch.Tensor:
        """(page_size, elements) storage offsets, relative to the page's start, of each token's K/V elements, in one
        order shared by all tokens (element e of token a corresponds to element e of token b)."""
        impl = layer.impl
        heads, dim = impl.num_kv_heads, impl.head_size
        shape = list(kv.shape)
        shape[page_dim] = 1
        scratch = torch.zeros(shape, dtype=kv.dtype, device=kv.device)
        page = scratch.numel() // (2 * heads * dim)
        ids = torch.arange(page * 2 * heads * dim, device=kv.device).view(page, 2, heads, dim)
        code = torch.zeros(scratch.numel(), dtype=torch.long, device=kv.device)
        slots = torch.arange(page, device=kv.device)
        digits = 1
        while BASE**digits < ids.numel():
            digits += 1
        written = None
        for d in range(digits):
            values = ((ids // BASE**d) % BASE + 1).to(kv.dtype)
            scratch.zero_()
            impl.do_kv_cache_update(layer, values[:, 0].contiguous(), values[:, 1].contiguous(), scratch, slots)
            got = scratch.reshape(-1).round().long()
            written = got > 0 if written is None else written
            code += (got - 1).clamp(min=0) * BASE**d
        where = torch.nonzero(written).flatten()
        if len(where) != ids.numel() or not torch.equal(code[where].sort().values, ids.reshape(-1)):
            raise MementoError(f"memento: could not learn the KV layout of {type(impl).__name__} ({tuple(kv.shape)})")
        index = torch.stack(torch.unravel_index(where, tuple(shape)))  # (ndim, elements) scratch coordinates
        stride = torch.tensor(kv.stride(), device=kv.device)[:, None]
        offsets = torch.empty(ids.numel(), dtype=torch.long, device=kv.device)
        offsets[code[where]] = (index * stride).sum(0)  # page coordinate is 0: relative to the page
        return offsets.view(page, 2 * heads * dim)

    def move(self, src: list[int], dst: list[int]) -> None:
        """Copy the K/V of slots `src` to slots `dst` in every layer (all reads happen before any write)."""
        device = self.layers[0][0].device
        src_t, dst_t = (torch.tensor(x, dtype=torch.long, device=device) for x in (src, dst))
        for flat, offsets, page_stride, base in self.layers:
            at_src = base + (src_t // self.page * page_stride)[:, None] + offsets[src_t % self.page]
            at_dst = base + (dst_t // self.page * page_stride)[:, None] + offsets[dst_t % self.page]
            flat[at_dst] = flat[at_src]


class MementoWorker(_Base):
    def init_device(self):
        check_supported(self.vllm_config)
        super().init_device()
        self.memento = settings(self.vllm_config)
        self.mover: KVMover | None = None
        self.evicted: dict[str, int] = {}
        runner = self.model_runner
        prepare = runner._prepare_inputs

        def prepare_inputs(scheduler_output, num_scheduled_tokens):
            out = prepare(scheduler_output, num_scheduled_tokens)
            self._to_physical(num_scheduled_tokens)
            return out

        runner._prepare_inputs = prepare_inputs

    def initialize_from_config(self, kv_cache_config) -> None:
        """Allocate the KV cache, then learn its layout at once: a layout the mover cannot handle fails at start-up,
        not at the first eviction of a serving engine."""
        super().initialize_from_config(kv_cache_config)
        self.mover = KVMover(self.model_runner)

    @torch.inference_mode()
    def execute_model(self, scheduler_output):
        moves = getattr(scheduler_output, "memento_moves", None)
        if moves is None:
            raise MementoError("memento: the worker got a step from a scheduler without Memento (scheduler_cls)")
        self.evicted = scheduler_output.memento_evicted
        if moves:
            self.mover = self.mover or KVMover(self.model_runner)
            for rid, steps in moves.items():
                for src, dst, keep in steps:
                    if src:
                        self.mover.move(src, dst)
                    self._truncate(rid, keep)
        return super().execute_model(scheduler_output)

    def _truncate(self, rid: str, keep: int) -> None:
        """The request owns its first `keep` pages only (the scheduler freed the rest)."""
        runner = self.model_runner
        state = runner.requests.get(rid)
        if state is not None:
            state.block_ids[0][keep:] = []
        row = runner.input_batch.req_id_to_index.get(rid)
        if row is not None:
            table = runner.input_batch.block_table.block_tables[0]
            held = int(table.num_blocks_per_row[row])
            table.block_table.np[row, keep:held] = 0  # the freed pages' ids do not linger past the row's end
            table.num_blocks_per_row[row] = min(held, keep)

    def _to_physical(self, num_scheduled_tokens: np.ndarray) -> None:
        runner = self.model_runner
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        shift = np.array([self.evicted.get(rid, 0) for rid in batch.req_ids[:num_reqs]], dtype=np.int64)
        if not shift.any():
            return
        n = int(num_scheduled_tokens.sum())
        per_token = torch.from_numpy(np.repeat(shift, num_scheduled_tokens)).to(runner.positions.device)
        physical = runner.positions[:n] - per_token
        batch.block_table.compute_slot_mapping(num_reqs, runner.query_start_loc.gpu[: num_reqs + 1], physical)
        shift_t = torch.from_numpy(shift)
        runner.seq_lens[:num_reqs] -= shift_t.to(runner.seq_lens.device, runner.seq_lens.dtype)
        runner.optimistic_seq_lens_cpu[:num_reqs] -= shift_t.to(runner.optimistic_seq_lens_cpu.dtype)
