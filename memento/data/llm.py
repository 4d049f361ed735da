"""LLM backends for the data pipeline: any OpenAI-compatible endpoint, with retries, a response cache and usage.

Design choices:
- One small interface, `LLMBackend.complete(messages, max_tokens) -> str`. The stages own their prompts and
  parsers; backends only move text.
- `OpenAIBackend` retries 429 (honouring Retry-After), 5xx, timeouts, connection resets and unreadable HTTP bodies
  with exponential backoff and jitter; other 4xx fail at once. Concurrency is bounded by a semaphore; the
  pipeline's worker threads share one thread-safe HTTP client.
- `CachedBackend` keys each request (model, messages, parameters, attempt number) by SHA-256 in a SQLite file, so
  a re-run after a crash repeats no finished call, and a stage's retry sequence replays identically.
- Usage (calls, retries, tokens, cost) is added to the `Usage` of the current trace (a context variable set by the
  pipeline around each trace), so stats are per trace even with many workers.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from memento.core.errors import MementoError

log = logging.getLogger(__name__)


class LLMUnavailable(MementoError):
    """The endpoint did not answer usably after all retries (transient: a re-run tries again)."""


class LLMRequestError(MementoError):
    """The endpoint refused the request itself (a 4xx such as a context-length error): retrying cannot help, so
    the trace is recorded as failed."""


class LLMOutputError(MementoError):
    """A model's reply does not parse as the stage asked; the only error the output parsers raise."""


@dataclass
class Usage:
    calls: int = 0
    cached: int = 0
    retries: int = 0
    repairs: int = 0
    tokens: int = 0
    cost: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def merge(self, other: Usage) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


current_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("current_usage", default=None)


def trace_usage() -> Usage:
    return current_usage.get() or Usage()


def fan_out(fn, items: list, parallel: bool = True) -> list:
    """`[fn(x) for x in items]`, the calls running concurrently when `parallel` (the independent LLM calls of one
    trace; the backend's own limit still caps requests in flight). Order is kept, an exception is raised in the
    caller, and each call's usage is counted toward the caller's trace."""
    if not parallel or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    def one(x):
        usage = Usage()
        current_usage.set(usage)
        return fn(x), usage

    with ThreadPoolExecutor(len(items)) as pool:
        done = list(pool.map(lambda x: contextvars.Context().run(one, x), items))
    parent = current_usage.get()
    for _, usage in done:
        if parent is not None:
            parent.merge(usage)
    return [result for result, _ in done]


class LLMBackend(ABC):
    """Contract: `complete` returns the assistant's text or raises `LLMUnavailable`; `attempt` distinguishes a
    stage's retries of the same request (so caches keep them apart)."""

    model: str

    @abstractmethod
    def complete(self, messages: list[dict], max_tokens: int = 1024, attempt: int = 0) -> str: ...


class OpenAIBackend(LLMBackend):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        concurrency: int = 16,
        price_in: float = 0.0,
        price_out: float = 0.0,
        temperature: float | None = None,
        reasoning_effort: str | None = None,
        max_completion_tokens: int | None = 16_000,
    ):
        """Reasoning-model-safe requests: `max_completion_tokens` (reasoning counts against it: the release gives
        16,000 to every call; None sends the stage's own budget), a temperature only when one is set, and
        `reasoning_effort` only when given."""
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        key = api_key or os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.slots = threading.Semaphore(concurrency)
        self.price_in, self.price_out = price_in / 1e6, price_out / 1e6  # prices per million tokens
        self.options = {"temperature": temperature, "reasoning_effort": reasoning_effort}
        self.budget = max_completion_tokens

    def complete(self, messages, max_tokens=1024, attempt=0):
        import httpx

        body = {"model": self.model, "messages": messages, "max_completion_tokens": self.budget or max_tokens}
        body |= {k: v for k, v in self.options.items() if v is not None}
        usage = trace_usage()
        problem = ""
        for retry in range(self.max_retries + 1):
            if retry:
                usage.retries += 1
            wait = None
            try:
                with self.slots:
                    response = self.client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                        text = data["choices"][0]["message"]["content"]
                        if not isinstance(text, str):
                            raise TypeError("content is not text")
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        problem = f"unreadable response body ({e})"
                    else:
                        tokens = data.get("usage") or {}
                        usage.calls += 1
                        usage.tokens += int(tokens.get("total_tokens", 0))
                        usage.cost += self.price_in * int(tokens.get("prompt_tokens", 0))
                        usage.cost += self.price_out * int(tokens.get("completion_tokens", 0))
                        return text
                elif response.status_code in (408, 429) or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}"
                    wait = _retry_after(response.headers.get("retry-after"))
                else:
                    raise LLMRequestError(f"{self.url}: HTTP {response.status_code}: {response.text[:300]}")
            if retry < self.max_retries:
                delay = wait if wait is not None else min(self.max_backoff, self.backoff * 2**retry)
                time.sleep(delay * (1 + 0.25 * random.random()))
                log.info("retrying %s after %s", self.url, problem)
        raise LLMUnavailable(f"{self.url}: no usable answer after {self.max_retries + 1} tries (last: {problem})")


class HFBackend(LLMBackend):
    """A local Hugging Face causal LM (greedy decoding), e.g. `smollm2` or any chat model folder.

    `max_new_tokens` caps every reply (small models rarely need the stages' full budgets). Calls are serialised:
    one model, one forward at a time.
    """

    def __init__(self, model: str, max_new_tokens: int = 512, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from memento import assets

        folder = assets.smollm2_dir() if model == "smollm2" else Path(model)
        if not folder.is_dir():
            raise MementoError(f"hf backend: '{model}' is not a model folder (or 'smollm2')")
        self.model = str(model)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    def complete(self, messages, max_tokens=1024, attempt=0):
        import torch

        batch = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        with self.lock, torch.no_grad():
            out = self.lm.generate(
                **batch,
                max_new_tokens=min(max_tokens, self.max_new_tokens),
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new = out[0, batch["input_ids"].shape[1] :]
        usage = trace_usage()
        usage.calls += 1
        usage.tokens += int(batch["input_ids"].shape[1] + new.shape[0])
        return self.tokenizer.decode(new, skip_special_tokens=True)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class CachedBackend(LLMBackend):
    """Wraps a backend with a SQLite response cache (one file, safe across threads and crashes)."""

    def __init__(self, inner: LLMBackend, path: str | Path):
        self.inner = inner
        self.model = inner.model
        self.lock = threading.Lock()
        self.in_flight: dict[str, threading.Event] = {}
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL)")

    def complete(self, messages, max_tokens=1024, attempt=0):
        request = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "attempt": attempt}
        key = hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        while True:
            with self.lock:
                row = self.db.execute("SELECT text FROM responses WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    trace_usage().cached += 1
                    return row[0]
                pending = self.in_flight.get(key)
                if pending is None:  # this thread asks; others wanting the same answer wait for it
                    pending = self.in_flight[key] = threading.Event()
                    break
            pending.wait()
            with self.lock:
                failed = (
                    key not in self.in_flight
                    and self.db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is None
                )
            if failed:  # the other thread's call failed: try ourselves
                continue
        try:
            text = self.inner.complete(messages, max_tokens, attempt)
            with self.lock:
                self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, text))
            return text
        finally:
            with self.lock:
                self.in_flight.pop(key).set()


def parse_json_object(text: str) -> dict:
    """The JSON object in a reply (code fences and chatter around it tolerated); LLMOutputError otherwise."""
    if not isinstance(text, str):
        raise LLMOutputError("reply is not text")
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise LLMOutputError("no JSON object in the reply")
    try:
        value = json.loads(candidate[start : end + 1])
    except (ValueError, RecursionError) as e:
        raise LLMOutputError(f"invalid JSON in the reply: {e}") from None
    if not isinstance(value, dict):
        raise LLMOutputError("the reply's JSON is not an object")
    return value


def ask(backend: LLMBackend, prompt: str, parse, retries: int = 5, max_tokens: int = 1024):
    """Call until `parse(reply)` succeeds, at most 1 + `retries` times; returns (value, None) or (None, last
    reply) so the caller can repair. Transport failures (`LLMUnavailable`) propagate."""
    reply = ""
    for attempt in range(retries + 1):
        if attempt:
            trace_usage().retries += 1
        reply = backend.complete([{"role": "user", "content": prompt}], max_tokens, attempt)
        try:
            return parse(reply), None
        except LLMOutputError as e:
            log.info("unparsable reply (%s), attempt %d", e, attempt + 1)
    return None, reply


def prompt(name: str, **fields) -> str:
    """A versioned prompt file of the package with `{field}` slots filled (other braces are left alone)."""
    text = (Path(__file__).parent / "prompts" / f"{name}.txt").read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    # one pass over the template: braces inside the filled-in texts (code, LaTeX) are never touched
    text = re.sub(r"\{(\w+)\}", lambda m: str(fields[m[1]]) if m[1] in fields else m[0], text)
    return text.strip() + "\n"
