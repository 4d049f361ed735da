"""The engines `memento eval` generates with, behind one interface (`Backend`): built from the settings and the
prompts to come, then `generate(prompts, seeds, batch_size)` -> one `Sample` (text, finish reason, tokens, blocks,
block and memento lengths, evicted tokens, peak KV in tokens and bytes, KV AUC) per prompt, and `close()`.

Design choices:
- The reference engine measures KV while it decodes. On vLLM the scheduler reports blocks, evictions and peak KV
  (what `/metrics` counts), and the AUC is replayed from the tokens (`memento.core.kv.replay`, the way the paper
  computed its Table 1); the replay's peak must agree with the scheduler's.
- A model without the Memento tokens is a base model, run under `--policy full` only: on the reference engine the
  tokens are added for its bookkeeping and banned from sampling; on vLLM it runs on stock vLLM, its KV replayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from memento.core.errors import MementoError
from memento.core.kv import auc_ktok
from memento.core.precision import vllm_dtype

if TYPE_CHECKING:
    from memento.engine.generate import Generation
    from memento.eval.settings import EvalSettings


@dataclass
class Sample:
    """One generated sample and the KV it cost (a line of `results.jsonl`, with the problem's fields)."""

    finish_reason: str  # stop | length
    tokens: int  # generated
    blocks: int
    evicted_tokens: int
    peak_kv_tokens: int
    auc_kv_ktok: float
    peak_kv_bytes: int
    block_tokens: list[int] = field(default_factory=list)  # per block, delimiters excluded
    memento_tokens: list[int] = field(default_factory=list)
    text: str = ""
    request: str | None = None  # the server's request id (engine server: the label of its live KV on /metrics)

    def record(self) -> dict:
        return asdict(self)


class Backend(Protocol):
    def generate(self, prompts: list[str], seeds: list[int], batch_size: int) -> list[Sample]: ...

    def close(self) -> None: ...


def _sizes(ids: list[int], special) -> tuple[list[int], list[int]]:
    """Block and memento lengths (tokens, delimiters excluded) of a completion, however malformed."""
    from memento.core.spans import Kind, label

    if special is None:  # a base model: no blocks
        return [], []
    spans = label(ids, special, 0, strict=False)
    return spans.count(Kind.BLOCK).tolist(), spans.count(Kind.SUMMARY).tolist()


def sample_of(g: Generation, special) -> Sample:
    """A reference-engine generation as a sample (`special`: the Memento ids, None for a base model)."""
    s = g.stats
    return Sample(
        g.finish_reason,
        s.generated_tokens,
        s.blocks,
        s.evicted_tokens,
        s.peak_kv_tokens,
        auc_ktok(s.kv_timeline[s.prefill_steps :]),
        s.peak_kv_bytes,
        *_sizes(g.ids, special),
        g.text,
    )


def _base_model(settings: EvalSettings, tokenizer) -> list[str]:
    """The Memento tokens `tokenizer` lacks (none: a Memento model); a clear error when eviction needs them."""
    from memento.tokenizer import SPECIAL_TOKENS

    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing and settings.eviction.evicts:
        raise MementoError(
            f"--model {settings.model} has no Memento tokens ({', '.join(missing)}): a base model is "
            "evaluated with --policy full (or ?policy=full in --run)"
        )
    return missing


class ReferenceBackend:
    """The reference engine: KV statistics measured while it decodes."""

    def __init__(self, settings: EvalSettings, prompts: list[str], device: str | None = None):
        import torch
        from transformers import AutoTokenizer

        from memento.engine.generate import ReferenceEngine

        if not Path(settings.model).is_dir():
            raise MementoError(f"--model {settings.model}: not a folder with a Hugging Face model")
        missing = _base_model(settings, AutoTokenizer.from_pretrained(settings.model))
        dtype = torch.float32 if settings.dtype == "auto" else getattr(torch, settings.dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.settings = settings
        self.engine = ReferenceEngine.from_pretrained(
            settings.model, settings.eviction, device, dtype, add_tokens=bool(missing)
        )
        self.banned = self.engine.tokenizer.convert_tokens_to_ids(missing)  # added for bookkeeping, never sampled

    def _ban(self, request: int, ids: list[int], logits):
        logits[self.banned] = float("-inf")
        return logits

    def generate(self, prompts: list[str], seeds: list[int], batch_size: int) -> list[Sample]:
        from memento.engine.sampling import Sampling

        st = self.settings
        sampling = Sampling(
            max_new_tokens=st.max_new_tokens, temperature=st.temperature, top_p=st.top_p, top_k=st.top_k
        )
        done = self.engine.generate(
            prompts, sampling, batch_size=batch_size, seeds=seeds, processor=self._ban if self.banned else None
        )
        return [sample_of(g, None if self.banned else self.engine.special) for g in done]

    def close(self) -> None:
        pass


class VLLMBackend:
    """Memento on vLLM: the scheduler's KV statistics (`kv_transfer_params["memento"]`), the AUC replayed."""

    def __init__(self, settings: EvalSettings, prompts: list[str], device: str | None = None):
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from memento.core.chat import encode_chat, memento_ids
        from memento.core.kv import KVGeometry
        from memento.engine.vllm import engine_args, environment, require_vllm

        vllm = require_vllm()
        if not Path(settings.model).is_dir():
            raise MementoError(f"--model {settings.model}: not a folder with a Hugging Face model")
        environment()  # what the extension needs (the user's own settings win)
        self.settings, self.policy = settings, settings.eviction
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        base = bool(_base_model(settings, self.tokenizer))
        self.special = None if base else memento_ids(self.tokenizer)
        self.encode = lambda prompt: encode_chat(self.tokenizer, prompt).ids
        longest = max(len(self.encode(p)) for p in prompts) + settings.max_new_tokens
        context = getattr(AutoConfig.from_pretrained(settings.model).get_text_config(), "max_position_embeddings", None)
        longest = min(longest, context or longest)  # a sample that reaches it ends as `length`
        args = {
            "dtype": vllm_dtype(settings.dtype),
            "seed": settings.seed,
            "max_model_len": longest,
            "enforce_eager": not torch.cuda.is_available(),
        }
        self.llm = vllm.LLM(model=settings.model, **(args if base else engine_args(self.policy, **args)))
        config = self.llm.llm_engine.model_config  # the KV is held in the dtype vLLM runs, not the checkpoint's
        self.geometry = replace(KVGeometry.from_config(config.hf_config), dtype_bytes=config.dtype.itemsize)

    def generate(self, prompts: list[str], seeds: list[int], batch_size: int) -> list[Sample]:
        from vllm import SamplingParams

        st = self.settings
        ids = [self.encode(p) for p in prompts]
        params = [
            SamplingParams(
                temperature=st.temperature,
                top_p=st.top_p,
                top_k=st.top_k or -1,
                seed=seed,
                max_tokens=st.max_new_tokens,
                detokenize=False,
            )
            for seed in seeds
        ]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        return [self._sample(p, o) for p, o in zip(ids, outs, strict=True)]

    def _sample(self, prompt: list[int], output) -> Sample:
        done = output.outputs[0]
        server = None if self.special is None else output.kv_transfer_params["memento"]
        return _served(self, prompt, list(done.token_ids), done.finish_reason, server)

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


def _served(backend, prompt: list[int], completion: list[int], finish_reason: str, server: dict | None) -> Sample:
    """A sample served by vLLM (in process or over HTTP): the scheduler's statistics (`server`; None for a base
    model, which keeps everything), the AUC replayed from the tokens, and the replay's peak checked against the
    scheduler's."""
    from memento.core.kv import replay
    from memento.core.spans import label

    fed = prompt + (completion[:-1] if completion else [])  # the last sampled token is never fed
    if backend.special is None:
        timeline = np.arange(len(prompt), len(fed) + 1)
        server = {"blocks": 0, "evicted_tokens": 0, "peak_kv_tokens": len(fed)}
    else:
        spans = label(fed, backend.special, len(prompt), strict=False)
        timeline = replay(spans, backend.policy, backend.geometry).tokens[len(prompt) - 1 :]  # as the reference's
    if int(timeline.max()) != server["peak_kv_tokens"]:
        raise MementoError(
            f"vLLM held {server['peak_kv_tokens']} KV tokens at peak, the replay of its tokens "
            f"{int(timeline.max())}: the engine and the accounting disagree"
        )
    return Sample(
        finish_reason,
        len(completion),
        server["blocks"],
        server["evicted_tokens"],
        server["peak_kv_tokens"],
        auc_ktok(timeline[1:]),
        server["peak_kv_tokens"] * backend.geometry.bytes_per_token,
        *_sizes(completion, backend.special),
        backend.tokenizer.decode(completion, skip_special_tokens=False),
    )


class ServerBackend:
    """A running `memento serve` over its OpenAI-compatible API (the paper's server mode): each response's KV
    statistics, the AUC replayed, and the server's `/metrics` polled while the requests run, into `kv_live.jsonl`
    of the run folder (`memento.eval.live`), so that the live peaks can be checked against the replay. The run's
    policy goes with every request; sampling too, with the sample's seed."""

    def __init__(self, settings: EvalSettings, prompts: list[str], base_url: str, out: Path):
        import httpx
        from transformers import AutoConfig, AutoTokenizer

        from memento.core.chat import memento_ids
        from memento.core.kv import KVGeometry
        from memento.eval.live import MetricsPoller

        if not Path(settings.model).is_dir():
            raise MementoError(f"--model {settings.model}: the served model's folder is needed (its tokenizer)")
        self.settings, self.policy = settings, settings.eviction
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        base = bool(_base_model(settings, self.tokenizer))
        self.special = None if base else memento_ids(self.tokenizer)  # the server applies the chat template
        self.geometry = KVGeometry.from_config(AutoConfig.from_pretrained(settings.model))
        self.url = base_url.rstrip("/")
        self.client = httpx.Client(timeout=None)
        try:
            self.served = self.client.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
            raise MementoError(f"--server {base_url}: no OpenAI-compatible server answers there ({e})") from None
        self.poller = MetricsPoller(self.url, out / "kv_live.jsonl").__enter__()

    def generate(self, prompts: list[str], seeds: list[int], batch_size: int) -> list[Sample]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(batch_size, len(prompts))) as pool:
            return list(pool.map(self._one, prompts, seeds))

    def _one(self, prompt: str, seed: int) -> Sample:
        import json

        st = self.settings
        body = {
            "model": self.served,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": st.max_new_tokens,
            "temperature": st.temperature,
            "top_p": st.top_p,
            "top_k": st.top_k or -1,
            "seed": seed,
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if self.special is not None:
            body["vllm_xargs"] = {"memento_policy": json.dumps(st.policy)}
        response = self.client.post(f"{self.url}/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise MementoError(f"{self.url}: HTTP {response.status_code}: {response.text[:300]}")
        reply = response.json()
        choice = reply["choices"][0]
        server = None if self.special is None else reply["kv_transfer_params"]["memento"]
        sample = _served(self, reply["prompt_token_ids"], choice["token_ids"], choice["finish_reason"], server)
        return replace(sample, request=None if server is None else server["request_id"])

    def close(self) -> None:
        self.poller.__exit__(None, None, None)
        self.client.close()
