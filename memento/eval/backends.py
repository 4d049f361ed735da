"""The engines `memento eval` generates with, behind one interface: `Backend(settings, prompts, device)`, then
`generate(prompts, seeds, batch_size)` -> one dict of per-sample fields (text, finish reason, tokens, blocks, block
and memento lengths, evicted tokens, peak KV in tokens and bytes, KV AUC) per prompt, and `close()`.

Design choices:
- The reference engine measures KV while it decodes. On vLLM the scheduler reports blocks, evictions and peak KV
  (what `/metrics` counts), and the AUC is replayed from the tokens (`memento.core.kv.replay`, the way the paper
  computed its Table 1); the replay's peak must agree with the scheduler's.
- A model without the Memento tokens is a base model, run under `--policy full` only: on the reference engine the
  tokens are added for its bookkeeping and banned from sampling; on vLLM it runs on stock vLLM, its KV replayed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memento.core.errors import MementoError
from memento.core.kv import auc_ktok
from memento.core.policy import EvictionPolicy
from memento.core.precision import vllm_dtype

if TYPE_CHECKING:
    from memento.eval.settings import EvalSettings


def _sizes(ids: list[int], special) -> dict:
    """Block and memento lengths (tokens, delimiters excluded) of a completion, however malformed."""
    from memento.core.spans import Kind, label

    if special is None:  # a base model: no blocks
        return {"block_tokens": [], "memento_tokens": []}
    spans = label(ids, special, 0, strict=False)
    return {"block_tokens": spans.count(Kind.BLOCK).tolist(), "memento_tokens": spans.count(Kind.SUMMARY).tolist()}


def _base_model(settings: EvalSettings, tokenizer) -> list[str]:
    """The Memento tokens `tokenizer` lacks (none: a Memento model); a clear error when eviction needs them."""
    from memento.tokenizer import SPECIAL_TOKENS

    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing and settings.policy["keep_last_n_blocks"] >= 0:
        raise MementoError(f"--model {settings.model} has no Memento tokens ({', '.join(missing)}): a base model is "
                           "evaluated with --policy full (or ?policy=full in --run)")  # fmt: skip
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
        self.engine = ReferenceEngine.from_pretrained(settings.model, EvictionPolicy(**settings.policy), device, dtype,
                                                      add_tokens=bool(missing))  # fmt: skip
        self.banned = self.engine.tokenizer.convert_tokens_to_ids(missing)  # added for bookkeeping, never sampled

    def _ban(self, request: int, ids: list[int], logits):
        logits[self.banned] = float("-inf")
        return logits

    def generate(self, prompts: list[str], seeds: list[int], batch_size: int) -> list[dict]:
        from memento.engine.sampling import Sampling

        st = self.settings
        sampling = Sampling(max_new_tokens=st.max_new_tokens, temperature=st.temperature, top_p=st.top_p,
                            top_k=st.top_k)  # fmt: skip
        out = []
        for g in self.engine.generate(prompts, sampling, batch_size=batch_size, seeds=seeds,
                                      processor=self._ban if self.banned else None):  # fmt: skip
            s = g.stats
            out.append({"finish_reason": g.finish_reason, "tokens": s.generated_tokens, "blocks": s.blocks,
                        "evicted_tokens": s.evicted_tokens, "peak_kv_tokens": s.peak_kv_tokens,
                        "auc_kv_ktok": auc_ktok(s.kv_timeline[1:]), "peak_kv_bytes": s.peak_kv_bytes,
                        **_sizes(g.ids, None if self.banned else self.engine.special), "text": g.text})  # fmt: skip
        return out

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
        self.settings, self.policy = settings, EvictionPolicy(**settings.policy)
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        base = bool(_base_model(settings, self.tokenizer))
        self.special = None if base else memento_ids(self.tokenizer)
        self.encode = lambda prompt: encode_chat(self.tokenizer, prompt).ids
        longest = max(len(self.encode(p)) for p in prompts) + settings.max_new_tokens
        context = getattr(AutoConfig.from_pretrained(settings.model).get_text_config(), "max_position_embeddings", None)
        longest = min(longest, context or longest)  # a sample that reaches it ends as `length`
        args = {"dtype": vllm_dtype(settings.dtype), "seed": settings.seed, "max_model_len": longest,
                "enforce_eager": not torch.cuda.is_available()}  # fmt: skip
        self.llm = vllm.LLM(model=settings.model, **(args if base else engine_args(self.policy, **args)))
        config = self.llm.llm_engine.model_config  # the KV is held in the dtype vLLM runs, not the checkpoint's
        self.geometry = replace(KVGeometry.from_config(config.hf_config), dtype_bytes=config.dtype.itemsize)

    def generate(self, prompts: list[str], seeds: list[int], batch_size: int) -> list[dict]:
        from vllm import SamplingParams

        st = self.settings
        ids = [self.encode(p) for p in prompts]
        params = [SamplingParams(temperature=st.temperature, top_p=st.top_p, top_k=st.top_k or -1, seed=seed,
                                 max_tokens=st.max_new_tokens, detokenize=False) for seed in seeds]  # fmt: skip
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        return [self._sample(p, o) for p, o in zip(ids, outs, strict=True)]

    def _sample(self, prompt: list[int], output) -> dict:
        from memento.core.kv import replay
        from memento.core.spans import label

        done = output.outputs[0]
        completion = list(done.token_ids)
        fed = prompt + (completion[:-1] if completion else [])  # the last sampled token is never fed
        if self.special is None:  # a base model keeps everything
            timeline = np.arange(len(prompt), len(fed) + 1)
            server = {"blocks": 0, "evicted_tokens": 0, "peak_kv_tokens": len(fed)}
        else:
            spans = label(fed, self.special, len(prompt), strict=False)
            timeline = replay(spans, self.policy, self.geometry).tokens[len(prompt) - 1 :]  # as the reference's
            server = output.kv_transfer_params["memento"]
        if int(timeline.max()) != server["peak_kv_tokens"]:
            raise MementoError(f"vLLM held {server['peak_kv_tokens']} KV tokens at peak, the replay of its tokens "
                               f"{int(timeline.max())}: the engine and the accounting disagree")  # fmt: skip
        return {"finish_reason": done.finish_reason, "tokens": len(completion), "blocks": server["blocks"],
                "evicted_tokens": server["evicted_tokens"], "peak_kv_tokens": server["peak_kv_tokens"],
                "auc_kv_ktok": auc_ktok(timeline[1:]),
                "peak_kv_bytes": server["peak_kv_tokens"] * self.geometry.bytes_per_token,
                **_sizes(completion, self.special),
                "text": self.tokenizer.decode(completion, skip_special_tokens=False)}  # fmt: skip

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
