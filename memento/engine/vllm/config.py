"""The Memento settings of a vLLM engine, read the same way in the EngineCore and worker processes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy, forget_pattern
from memento.core.spans import MementoIds

log = logging.getLogger(__name__)
LIVE = "memento_live"  # kv_transfer_params of a running request's step output: read and removed by the front end


@dataclass(frozen=True)
class Settings:
    policy: EvictionPolicy
    special: MementoIds


POLICY = "memento_policy"  # SamplingParams.extra_args key: this request's policy instead of the engine's
FORGET = "memento_forget"  # SamplingParams.extra_args key: selective strict forgetting (a regular expression)


def request_policy(default: EvictionPolicy, params) -> EvictionPolicy:
    """The policy of one request: `extra_args["memento_policy"]` (a policy name, or a dict of `EvictionPolicy`
    fields, or that dict as JSON text: what the OpenAI API's `vllm_xargs` can carry) or the engine's."""
    extra = (getattr(params, "extra_args", None) or {}).get(POLICY)
    if extra is None:
        return default
    if isinstance(extra, str) and extra.lstrip().startswith("{"):
        try:
            extra = json.loads(extra)
        except ValueError as e:
            raise MementoError(f"extra_args.{POLICY}: not valid JSON ({e})") from e
    if isinstance(extra, str):
        return EvictionPolicy.named(extra)
    try:
        return EvictionPolicy(**extra)
    except TypeError as e:
        raise MementoError(f"extra_args.{POLICY}: {e}") from e


def request_forget(params) -> str | None:
    """The request's `extra_args["memento_forget"]`: a regular expression on a block's text (the blocks it matches
    are forgotten as in restart mode, the others evicted normally; `Sampling.forget`), checked; None if absent."""
    regex = (getattr(params, "extra_args", None) or {}).get(FORGET)
    if regex is not None:
        forget_pattern(regex, f"extra_args.{FORGET}")
    return regex


def check_supported(vllm_config) -> None:
    """Refuse, at start-up and all at once, the engine settings the extension cannot serve correctly, each with its
    fix. Called by the scheduler and the worker before vLLM builds anything, so no request is ever lost to one of
    these mid-run (a plain `vllm serve --scheduler-cls ...` skips `engine_args`, which sets the right ones)."""
    problems = []
    if getattr(vllm_config, "use_v2_model_runner", False):
        problems.append("vLLM's V2 model runner (the worker extends V1's): set VLLM_USE_V2_MODEL_RUNNER=0")
    if vllm_config.speculative_config is not None:
        problems.append(
            "speculative decoding (drafts write KV by logical position and can skip the eviction moment): "
            "remove --speculative-config"
        )
    if getattr(vllm_config.scheduler_config, "async_scheduling", False):
        problems.append("async scheduling (an eviction must be known before the next step): --no-async-scheduling")
    dtype = str(vllm_config.cache_config.cache_dtype)
    if dtype != "auto":
        problems.append(f"a quantized KV cache (kv_cache_dtype={dtype}: moves would not carry its scales): use auto")
    parallel = vllm_config.parallel_config
    for name in ("decode_context_parallel_size", "prefill_context_parallel_size"):
        if getattr(parallel, name, 1) > 1:
            problems.append(f"context parallelism ({name}={getattr(parallel, name)}): use 1")
    if vllm_config.kv_transfer_config is not None:
        problems.append("a KV transfer connector (it moves KV the extension compacts): remove --kv-transfer-config")
    if getattr(vllm_config.model_config, "use_mla", False):
        problems.append("MLA attention (one latent cache per token): not handled yet")
    if problems:
        raise MementoError("memento cannot run this vLLM engine: " + "; ".join(problems))


def settings(vllm_config) -> Settings:
    """The policy from `additional_config["memento"]`, the special-token ids from the model's tokenizer."""
    from memento.engine.vllm import require_vllm

    require_vllm()
    extra = (vllm_config.additional_config or {}).get("memento")
    if extra is None:
        raise MementoError(
            "the Memento scheduler/worker needs additional_config={'memento': {'policy': {...}}}: "
            "build the engine with memento.engine.vllm.engine_args() or `memento serve`"
        )
    try:
        policy = EvictionPolicy(**extra.get("policy", {}))
    except TypeError as e:
        raise MementoError(f"additional_config.memento.policy: {e}") from e
    if "special" in extra:
        special = MementoIds(**extra["special"])
    else:
        from transformers import AutoTokenizer

        from memento.core.chat import memento_ids

        model = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, revision=model.tokenizer_revision)
        special = memento_ids(tokenizer)
    return Settings(policy, special)
