"""The Memento settings of a vLLM engine, read the same way in the EngineCore and worker processes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.core.spans import MementoIds

log = logging.getLogger(__name__)
LIVE = "memento_live"  # kv_transfer_params of a running request's step output: read and removed by the front end


@dataclass(frozen=True)
class Settings:
    policy: EvictionPolicy
    special: MementoIds


POLICY = "memento_policy"  # SamplingParams.extra_args key: this request's policy instead of the engine's


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
