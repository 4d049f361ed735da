"""Live KV from a running `memento serve`, compared with the token-replay simulation (the paper's server mode).

The paper computed its Table 1 KV by replaying each output's tokens under the eviction policy, and checked that
against the server's own metrics. Here:
- `MetricsPoller` polls the server's `/metrics` in a background thread while requests run, and appends what each
  request holds (`memento:request_kv_tokens`, `memento:request_peak_kv_tokens`; labelled by the engine's request id,
  which each response names in `kv_transfer_params.memento.request_id`) to a JSONL file: one line per change.
- `simulated_peak` replays one request's prompt and completion ids (`memento.core.kv.replay`).
- `compare` pairs both per request and reports the relative difference at peak.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from memento.core.errors import MementoError

HELD, PEAK = "memento:request_kv_tokens", "memento:request_peak_kv_tokens"


class MetricsPoller:
    """`with MetricsPoller(url, path):` polls `url/metrics` every `interval` seconds until the block ends, then once
    more (a request that finished between two polls keeps its final values there)."""

    def __init__(self, base_url: str, path: str | Path, interval: float = 0.05):
        self.url = base_url.rstrip("/") + "/metrics"
        self.path, self.interval = Path(path), interval
        self.polls = 0
        self._stop = threading.Event()
        self._last: dict[str, tuple[int, int]] = {}
        self._thread = threading.Thread(target=self._run, name="metrics-poller", daemon=True)
        self._error: Exception | None = None

    def __enter__(self) -> MetricsPoller:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = self.path.open("a")
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.poll()
        finally:
            self._sink.close()
        if self._error is not None and exc[0] is None:
            raise MementoError(f"{self.url}: polling failed ({self._error})") from self._error

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as e:  # keep polling through a transient error; reported at the end if it persists
                self._error = e
            else:
                self._error = None

    def poll(self) -> None:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url, timeout=5).text
        now = time.monotonic() - self._start
        values: dict[str, dict[str, int]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (HELD, PEAK):
                    values.setdefault(sample.labels["request_id"], {})[sample.name] = int(sample.value)
        self.polls += 1
        for request, v in values.items():
            state = (v.get(HELD, 0), v.get(PEAK, 0))
            if self._last.get(request) != state:
                self._last[request] = state
                line = {"t": round(now, 4), "request": request, "held": state[0], "peak": state[1]}
                self._sink.write(json.dumps(line) + "\n")
        self._sink.flush()


def read_polls(path: str | Path) -> dict[str, list[dict]]:
    """The poll log, per request, in time order."""
    out: dict[str, list[dict]] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["request"], []).append(row)
    return out


def simulated_peak(prompt: list[int], completion: list[int], special, policy) -> int:
    """The most KV tokens a request holds, replayed from its tokens (the last sampled token is never fed)."""
    from memento.core.kv import KVGeometry, replay
    from memento.core.spans import label

    fed = prompt + completion[:-1]
    spans = label(fed, special, len(prompt), strict=False)
    one = KVGeometry("tokens", 1, 1, 1, 1)  # token counts only
    return int(replay(spans, policy, one).tokens[len(prompt) - 1 :].max())


def compare(polls: dict[str, list[dict]], simulated: dict[str, int]) -> list[dict]:
    """Per request: its peak as `/metrics` showed it, as replayed, and the relative difference. A request the
    poller never saw is an error (the poll log does not belong to these requests)."""
    rows = []
    for request, peak in simulated.items():
        if request not in polls:
            raise MementoError(f"request {request}: not in the /metrics poll log")
        live = max(p["peak"] for p in polls[request])
        rows.append(
            {
                "request": request,
                "live_peak": live,
                "simulated_peak": peak,
                "relative_difference": abs(live - peak) / max(peak, 1),
                "polls": len(polls[request]),
            }
        )
    return rows
