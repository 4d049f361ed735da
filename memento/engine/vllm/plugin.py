"""vLLM general plugin (entry point `vllm.general_plugins: memento`), loaded by vLLM in each of its processes.

vLLM refuses to start when the KV pool cannot hold one request of `max_model_len` tokens. A Memento request never
holds its logical length (finished blocks are evicted), so with Memento on (`additional_config["memento"]`) that
check only warns: a model can serve contexts longer than its KV pool as long as the tokens held at once fit.
vLLM exposes no option for this, so the plugin wraps `EngineCore._initialize_kv_caches`, for the tested vLLM range
only. Engines without Memento are untouched.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def register() -> None:
    from memento.engine.vllm import TESTED

    try:
        import vllm
        from vllm.v1.core import kv_cache_utils
        from vllm.v1.engine.core import EngineCore
    except ImportError:
        return
    version = tuple(int(x) for x in vllm.__version__.split("+")[0].split(".")[:2])
    if not TESTED[0] <= version < TESTED[1] or getattr(EngineCore, "_memento_patched", False):
        return
    original = EngineCore._initialize_kv_caches

    def _initialize_kv_caches(self, vllm_config, *args, **kwargs):
        if "memento" not in (vllm_config.additional_config or {}):
            return original(self, vllm_config, *args, **kwargs)
        with _lenient_kv_check(kv_cache_utils):
            return original(self, vllm_config, *args, **kwargs)

    EngineCore._initialize_kv_caches = _initialize_kv_caches
    EngineCore._memento_patched = True


@contextlib.contextmanager
def _lenient_kv_check(module):
    strict = module._check_enough_kv_cache_memory

    def check(available_memory, get_needed_memory, max_model_len, estimate_max_model_len):
        if available_memory > 0 and get_needed_memory() > available_memory:
            log.warning(
                "memento: the KV pool holds fewer than max_model_len=%d tokens (about %d); Memento requests evict "
                "finished blocks, so they run as long as the tokens they hold at once fit",
                max_model_len,
                estimate_max_model_len(available_memory),
            )
            return
        strict(available_memory, get_needed_memory, max_model_len, estimate_max_model_len)

    module._check_enough_kv_cache_memory = check
    try:
        yield
    finally:
        module._check_enough_kv_cache_memory = strict
