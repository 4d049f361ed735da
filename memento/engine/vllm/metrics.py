"""Memento counters on vLLM's `/metrics` (entry point `vllm.stat_logger_plugins: memento`).

vLLM builds its stat loggers in the API server process; this one is a no-op unless the engine runs Memento
(`additional_config["memento"]`). Then it registers Prometheus metrics next to vLLM's own, fed from the per-request
statistics the scheduler attaches to each finished request (`kv_transfer_params["memento"]`): the front end sees
them as it turns engine outputs into responses, so `OutputProcessor.process_outputs` is wrapped to observe them.
Counters therefore move when requests finish; vLLM's `vllm:kv_cache_usage_perc` shows the freed pages live.

- `memento:requests_total`, `memento:blocks_total`, `memento:evictions_total`, `memento:evicted_tokens_total`
- `memento:peak_kv_tokens` (histogram, one observation per request)
- live, per request (label `request_id`, the engine's id, also in the response's `kv_transfer_params.memento`):
  `memento:request_kv_tokens` (KV tokens held after the last step) and `memento:request_peak_kv_tokens` (the most
  held so far). The scheduler sends them with every step's output of a running request; the front end sets the
  gauges and removes them from the output, so clients never see them. A finished request's gauges hold its final
  values until `KEEP_FINISHED` newer requests have finished (a poller reads them after the request ends).
"""

from __future__ import annotations

from collections import deque

from vllm.v1.metrics.loggers import StatLoggerBase

from memento.engine.vllm.config import LIVE

_metrics: dict | None = None
_finished: deque = deque()
KEEP_FINISHED = 1024


class MementoMetrics(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        if "memento" in (vllm_config.additional_config or {}):
            _install(vllm_config.model_config.served_model_name)

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass


def _install(model_name) -> None:
    global _metrics
    if _metrics is not None:
        return
    import prometheus_client
    from vllm.v1.engine.output_processor import OutputProcessor

    name = model_name[0] if isinstance(model_name, list | tuple) else model_name
    labels = ["model_name"]

    def counter(metric: str, about: str):
        return prometheus_client.Counter(f"memento:{metric}", about, labels).labels(str(name))

    _metrics = {
        "requests": counter("requests", "Finished requests served with Memento."),
        "blocks": counter("blocks", "Reasoning blocks written by finished requests."),
        "evictions": counter("evictions", "Blocks whose KV was released (at <|summary_end|>)."),
        "evicted_tokens": counter("evicted_tokens", "Tokens whose KV was released by Memento eviction."),
        "peak_kv_tokens": prometheus_client.Histogram(
            "memento:peak_kv_tokens",
            "Most KV tokens a finished request held at once.",
            labels,
            buckets=[2**k for k in range(6, 18)],
        ).labels(str(name)),
        "name": str(name),
        "held": prometheus_client.Gauge(
            "memento:request_kv_tokens", "KV tokens a request holds now.", [*labels, "request_id"]
        ),
        "peak": prometheus_client.Gauge(
            "memento:request_peak_kv_tokens", "Most KV tokens a request has held so far.", [*labels, "request_id"]
        ),
    }
    original = OutputProcessor.process_outputs

    def process_outputs(self, engine_core_outputs, *args, **kwargs):
        for output in engine_core_outputs:
            params = output.kv_transfer_params or {}
            if LIVE in params:
                live = params[LIVE]
                output.kv_transfer_params = None  # for the gauges only
                _gauge(output.request_id, live["held"], live["peak"])
            elif output.finish_reason is not None and params.get("memento"):
                _observe(output.request_id, params["memento"])
        return original(self, engine_core_outputs, *args, **kwargs)

    OutputProcessor.process_outputs = process_outputs


def _gauge(request_id: str, held: int, peak: int) -> None:
    _metrics["held"].labels(_metrics["name"], request_id).set(held)
    _metrics["peak"].labels(_metrics["name"], request_id).set(peak)


def _observe(request_id: str, stats: dict) -> None:
    _gauge(request_id, stats["final_kv_tokens"], stats["peak_kv_tokens"])
    _finished.append(request_id)
    while len(_finished) > KEEP_FINISHED:
        old = _finished.popleft()
        for gauge in (_metrics["held"], _metrics["peak"]):
            gauge.remove(_metrics["name"], old)
    _metrics["requests"].inc()
    _metrics["blocks"].inc(stats["blocks"])
    _metrics["evictions"].inc(stats["evictions"])
    _metrics["evicted_tokens"].inc(stats["evicted_tokens"])
    _metrics["peak_kv_tokens"].observe(stats["peak_kv_tokens"])
