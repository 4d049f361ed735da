"""`ReferenceEngine`: batched Memento generation with physical KV eviction on any HF causal LM (CPU or CUDA).

Requests run in a fixed number of batch slots with continuous refill: when a request finishes, its slot's KV is
freed and the next prompt is prefilled in the same forward that decodes the others (ragged chunks, see
`SlotCache.feed`). Every request evicts on its own schedule; statistics are per request.

Statistics count the KV of *fed* tokens: the token that ends a request (EOS, a stop string, the length limit) is
sampled but never fed, so it holds no KV. `memento.core.kv.replay` over the fed tokens gives the same occupancy,
token for token (tested).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from memento.core.chat import encode_chat, memento_ids
from memento.core.errors import MementoError
from memento.core.format import State
from memento.core.kv import KVGeometry, auc_gb_ktok
from memento.core.policy import EvictionPolicy
from memento.core.spans import Kind
from memento.engine.cache import SlotCache
from memento.engine.reference import Decoder, Row
from memento.engine.sampling import Sampling, choose

log = logging.getLogger(__name__)


@dataclass
class KVStats:
    prompt_tokens: int
    generated_tokens: int
    blocks: int
    evictions: int
    evicted_tokens: int
    peak_kv_tokens: int
    final_kv_tokens: int
    peak_kv_bytes: int
    final_kv_bytes: int
    auc_gb_ktok: float  # GB held, summed over generated tokens, / 1000
    seconds: float
    ms_per_token: float
    kv_timeline: list[int] = field(repr=False)  # tokens held after the prompt, then after each fed token


@dataclass
class Generation:
    prompt: str
    text: str  # the completion, special tokens included
    ids: list[int]  # the completion's token ids
    finish_reason: str  # stop | length | forced (teacher forcing ran out of tokens)
    stats: KVStats
    logits: torch.Tensor | None = field(default=None, repr=False)  # (steps, V) when asked for

    def to_dict(self) -> dict:
        from memento.core.format import recover

        out = {k: v for k, v in asdict(self).items() if k not in ("logits", "stats")}
        recovered = recover(self.text.removesuffix("<|im_end|>"), self.prompt)
        out["trace"] = {
            "blocks": [{"text": b.text, "memento": b.memento} for b in recovered.trace.blocks],
            "answer": recovered.trace.answer,
            "complete": not recovered.dropped,
        }
        out["stats"] = asdict(self.stats)
        return out


class ReferenceEngine:
    def __init__(self, model, tokenizer, policy: EvictionPolicy | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.policy = policy or EvictionPolicy(0)
        self.special = memento_ids(tokenizer)  # a clear error with the fix when the tokens are missing
        self.decoder = Decoder(model, self.special, self.policy)
        self.geometry = KVGeometry.from_config(model.config)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        self.eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.context = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_pretrained(cls, path: str | Path, policy: EvictionPolicy | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, add_tokens: bool = False) -> ReferenceEngine:  # fmt: skip
        """Load a model folder. `add_tokens` adds missing Memento tokens (untrained: for plumbing tests only)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from memento.tokenizer import give_memento_tokens

        path = Path(path)
        if not path.is_dir():
            raise MementoError(f"--model {path}: not a folder with a Hugging Face model")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        if add_tokens:
            give_memento_tokens(model, tokenizer)
        return cls(model, tokenizer, policy)

    def encode(self, prompt: str) -> list[int]:
        ids = encode_chat(self.tokenizer, prompt).ids
        if self.context and len(ids) >= self.context:
            raise MementoError(f"the prompt has {len(ids)} tokens; the model's context is {self.context}")
        return ids

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str] | str,
        sampling: Sampling | None = None,
        batch_size: int = 16,
        force: list[list[int]] | None = None,
        on_token: Callable[[int, int, Kind, int], None] | None = None,
        return_logits: bool = False,
        processor: Callable[[int, list[int], torch.Tensor], torch.Tensor] | None = None,
        seeds: list[int] | None = None,
    ) -> list[Generation]:
        """Generate for every prompt. `force[i]`: completion tokens to feed instead of sampling (teacher forcing).

        `on_token(request, token, kind, block)` is called for every produced token (a streaming hook for UIs);
        `processor(request, ids, logits) -> logits` may reshape the (V,) logits before sampling (constraints).
        The policy's `max_block_tokens` / `max_blocks` override both. `seeds[i]`: request i's own sampling seed
        (else request i draws from `sampling.seed + i`).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        sampling = sampling or Sampling()
        encoded = [self.encode(p) for p in prompts]
        queue = deque(range(len(prompts)))
        slots: list[int | None] = [None] * min(batch_size, len(prompts))
        rows: list[Row | None] = [None] * len(slots)
        cache = SlotCache(self.model, len(slots))
        results: list[Generation | None] = [None] * len(prompts)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        generators = [sampling.generator(i) if seeds is None else replace(sampling, seed=seeds[i]).generator()
                      for i in range(len(prompts))]  # fmt: skip
        logits_log: list[list[torch.Tensor]] = [[] for _ in prompts]
        started = [0.0] * len(prompts)
        chunks: list[list[int]] = [[] for _ in slots]
        where: list[list[int]] = [[] for _ in slots]

        def admit(s: int) -> None:
            if not queue:  # the slot leaves the batch at the end of this step
                slots[s], rows[s], chunks[s], where[s] = None, None, [], []
                return
            r = queue.popleft()
            slots[s], rows[s] = r, Row.start(encoded[r], self.special, self.policy)
            chunks[s], where[s] = list(encoded[r]), list(range(len(encoded[r])))
            started[r] = time.perf_counter()

        for s in range(len(slots)):
            admit(s)
        while any(r is not None for r in slots):
            logits = cache.feed(chunks, where, where)
            held = cache.occupancy().tolist()
            for s, r in enumerate(slots):
                if r is None:
                    continue
                row, last = rows[s], logits[s, len(chunks[s]) - 1]
                row.kv_timeline.append(int(held[s]))
                if return_logits:
                    logits_log[r].append(last.float().cpu())
                step = len(row.ids) - len(encoded[r])
                forced = force[r] if force is not None else None
                if forced is not None and step >= len(forced):
                    results[r] = self._finish(r, prompts[r], encoded[r], row, "forced", started[r], logits_log[r])
                    cache.free(s, torch.tensor(row_indices(row)))
                    admit(s)
                    continue
                if forced is not None:
                    token = forced[step]
                else:
                    scores = last if processor is None else processor(r, row.ids, last)
                    token = self._steer(row, scores, sampling, generators[r])
                block = row.add(token)
                if on_token is not None:
                    on_token(r, token, Kind(row.kind[-1]), row.block[-1])
                reason = self._stop(row, encoded[r], token, sampling) if forced is None else None
                if reason is not None:
                    results[r] = self._finish(r, prompts[r], encoded[r], row, reason, started[r], logits_log[r])
                    cache.free(s, torch.tensor(row_indices(row)))
                    admit(s)
                    continue
                redo = self.decoder.evict(rows, cache, s, block) if block is not None else []
                chunks[s], where[s] = [row.ids[i] for i in redo] + [token], [*redo, len(row.ids) - 1]
            if None in slots and any(r is not None for r in slots):
                keep = [s for s, r in enumerate(slots) if r is not None]
                cache.drop_rows(keep)
                slots, rows, chunks, where = ([x[s] for s in keep] for x in (slots, rows, chunks, where))
            elif None not in slots:
                cache.compact()
        return results

    def _steer(self, row: Row, logits: torch.Tensor, sampling: Sampling, generator) -> int:
        """The sampled token, unless the policy forces `<|block_end|>` (long block) or `</think>` (enough blocks)."""
        policy, state = self.policy, row.labeller.state
        if policy.max_block_tokens and state is State.BLOCK:
            opened = len(row.ids) - 1 - max(i for i, k in enumerate(row.kind) if k == Kind.BLOCK_START)
            if opened >= policy.max_block_tokens:
                return self.special.block_end
        if policy.max_blocks and state is State.THINK and row.labeller.index + 1 >= policy.max_blocks:
            return self.special.think_end
        return choose(logits, sampling, generator)

    def _stop(self, row: Row, prompt: list[int], token: int, sampling: Sampling) -> str | None:
        generated = len(row.ids) - len(prompt)
        if token in self.eos:
            return "stop"
        if sampling.stop:
            tail = self.tokenizer.decode(row.ids[-32:], skip_special_tokens=False)
            if any(s in tail for s in sampling.stop):
                return "stop"
        if generated >= sampling.max_new_tokens:
            return "length"
        if self.context and len(row.ids) >= self.context:
            return "length"
        return None

    def _finish(self, r, prompt, encoded, row: Row, reason, started, logits) -> Generation:
        ids = row.ids[len(encoded) :]
        seconds = time.perf_counter() - started
        timeline = row.kv_timeline
        per_token = self.geometry.bytes_per_token
        completion = np.asarray(timeline[1:], dtype=np.int64)
        stats = KVStats(
            prompt_tokens=len(encoded),
            generated_tokens=len(ids),
            blocks=row.labeller.index + 1,
            evictions=row.evictions,
            evicted_tokens=row.evicted_tokens,
            peak_kv_tokens=max(timeline),
            final_kv_tokens=timeline[-1],
            peak_kv_bytes=max(timeline) * per_token,
            final_kv_bytes=timeline[-1] * per_token,
            auc_gb_ktok=auc_gb_ktok(completion * per_token),
            seconds=seconds,
            ms_per_token=1000 * seconds / max(len(ids), 1),
            kv_timeline=list(timeline),
        )
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        stacked = torch.stack(logits) if logits else None
        return Generation(prompt, text, ids, reason, stats, stacked)


def row_indices(row: Row) -> list[int]:
    return list(range(len(row.ids)))
