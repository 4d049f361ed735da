"""`Engine`: batched Memento generation with physical KV eviction on token ids (any HF causal LM, CPU or CUDA).

Token ids in, token ids out: the engine knows nothing of chat templates or text (`memento.engine.generate` is the
layer that does). Requests run in a fixed number of batch slots with continuous refill: when a request finishes, its
slot's KV is freed and the next prompt is prefilled in the same forward that decodes the others (ragged chunks, see
`SlotCache.feed`). Every request evicts on its own schedule; statistics are per request.

Statistics count the KV of *fed* tokens: the token that ends a request (EOS, a stop string, the length limit) is
sampled but never fed, so it holds no KV. `memento.core.kv.replay` over `Completion.fed` gives the same occupancy,
token for token (tested).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from memento.core.errors import MementoError
from memento.core.format import State
from memento.core.kv import KVGeometry, auc_gb_ktok
from memento.core.policy import EvictionPolicy, Forget, forgetter
from memento.core.spans import Kind, MementoIds, Spans, label
from memento.engine.reference import Decoder, Row
from memento.engine.sampling import Sampling, choose

Processor = Callable[[int, list[int], torch.Tensor], torch.Tensor]  # (request, ids so far, (V,) logits) -> logits


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
    kv_timeline: list[int] = field(repr=False)  # tokens held after each part of the prompt, then each fed token
    prefill_steps: int = 1  # the timeline's entries for the prompt (more when `compact_prompt` cut it)
    forgotten: int = 0  # evictions that recomputed the survivors without the block (restart, or `Sampling.forget`)


@dataclass
class Completion:
    prompt_ids: list[int]
    ids: list[int]  # the completion's token ids
    finish_reason: str  # stop | length | forced (teacher forcing ran out of tokens)
    stats: KVStats
    logits: torch.Tensor | None = field(default=None, repr=False)  # (steps, V) when asked for
    logprobs: list[float] | None = field(default=None, repr=False)  # of each completion token, when asked for
    steered: list[bool] | None = field(default=None, repr=False)  # with logprobs: True where a policy cap put the token

    @property
    def fed(self) -> list[int]:
        """The tokens whose KV was computed: the prompt and the completion, less a sampled last token (never fed)."""
        return self.prompt_ids + (self.ids if self.finish_reason == "forced" else self.ids[:-1])

    def spans(self, special: MementoIds, fed: bool = False, turns: bool = False) -> Spans:
        """The prompt and completion labelled (however malformed); `fed`: only the tokens that were fed; `turns`:
        the prompt too, every assistant turn of it (what `compact_prompt` evicts)."""
        ids = self.fed if fed else self.prompt_ids + self.ids
        return label(ids, special, 0 if turns else len(self.prompt_ids), strict=False, turns=turns)


class Engine:
    """Generation on token ids: `generate(prompts)` -> one `Completion` per prompt, in order. `decode` (token ids ->
    text) is needed only by `Sampling.forget`, which matches a block's text."""

    def __init__(
        self,
        model,
        special: MementoIds,
        policy: EvictionPolicy | None = None,
        eos: set[int] = frozenset(),
        context: int | None = None,
        decode: Callable[[list[int]], str] | None = None,
    ):
        self.model = model.eval()
        self.special = special
        self.policy = policy or EvictionPolicy(0)
        self.eos = set(eos)
        self.context = context  # the model's longest sequence (None: no limit)
        self.geometry = KVGeometry.from_config(model.config)
        self.decode = decode

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        sampling: Sampling | None = None,
        batch_size: int = 16,
        force: list[list[int]] | None = None,
        on_token: Callable[[int, int, Kind, int], None] | None = None,
        return_logits: bool = False,
        processor: Processor | None = None,
        seeds: list[int] | None = None,
        stop: Callable[[list[int]], bool] | None = None,
        return_logprobs: bool = False,
    ) -> list[Completion]:
        """Generate for every prompt. `force[i]`: completion tokens to feed instead of sampling (teacher forcing).

        `on_token(request, token, kind, block)` is called for every produced token (a streaming hook for UIs);
        `processor(request, ids, logits) -> logits` may reshape the (V,) logits before sampling (constraints);
        `stop(ids)` ends a request when true (stop strings). The policy's `max_block_tokens` / `max_blocks` override
        all of them. `seeds[i]`: request i's own sampling seed (else request i draws from `sampling.seed + i`).
        `return_logprobs`: each completion token's log-prob under the model's logits at the sampling temperature (1
        when greedy), before any `processor` (RL's sampled log-probs), and `steered`: which tokens the policy's caps
        put in place of the sampled one (RL leaves them out of the loss: the model did not choose them).
        """
        sampling = sampling or Sampling()
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        generators = [
            sampling.generator(i) if seeds is None else replace(sampling, seed=seeds[i]).generator()
            for i in range(len(prompts))
        ]
        logits_log: list[list[torch.Tensor]] = [[] for _ in prompts]
        logprob_log: list[list[float]] = [[] for _ in prompts]
        steered_log: list[list[bool]] = [[] for _ in prompts]
        temperature = sampling.temperature or 1.0
        started = [0.0] * len(prompts)
        results: list[Completion | None] = [None] * len(prompts)
        queue = deque(range(len(prompts)))
        decoder = Decoder(self.model, self.special, self.policy, min(batch_size, len(prompts)), self._forget(sampling))

        def admit(slot: int) -> None:  # the next request into a free slot (none left: the slot leaves the batch)
            if queue:
                r = queue.popleft()
                decoder.start(slot, prompts[r], request=r)
                started[r] = time.perf_counter()

        def finish(slot: int, reason: str) -> None:
            row = decoder.finish(slot)
            r = row.request
            results[r] = self._completion(prompts[r], row, reason, started[r], logits_log[r])
            if return_logprobs:
                results[r].logprobs, results[r].steered = logprob_log[r], steered_log[r]
            admit(slot)

        for slot in range(len(decoder.rows)):
            admit(slot)
        while any(decoder.rows):
            logits = decoder.forward()
            for slot, row in enumerate(decoder.rows):
                if row is None:
                    continue
                r, last = row.request, decoder.last_logits(logits, slot)
                if return_logits:
                    logits_log[r].append(last.float().cpu())
                forced = force[r] if force is not None else None
                step = len(row.ids) - len(prompts[r])
                if forced is not None and step >= len(forced):
                    finish(slot, "forced")
                    continue
                steered = False
                if forced is not None:
                    token = forced[step]
                else:
                    token = self._capped(row)
                    steered = token is not None
                    if token is None:
                        scores = last if processor is None else processor(r, row.ids, last)
                        token = choose(scores, sampling, generators[r])
                if return_logprobs:
                    logprob_log[r].append(float(torch.log_softmax(last.float() / temperature, -1)[token]))
                    steered_log[r].append(steered)
                block = row.add(token)
                if on_token is not None:
                    on_token(r, token, Kind(row.kind[-1]), row.block[-1])
                reason = self._stop(row, len(prompts[r]), token, sampling, stop) if forced is None else None
                if reason is not None:  # the last token is never fed: nothing is evicted for it
                    finish(slot, reason)
                else:
                    decoder.schedule(slot, block)
            decoder.settle()
        return results

    def _forget(self, sampling: Sampling) -> Forget | None:
        """The rule of `sampling.forget` (selective strict forgetting), None without it."""
        if sampling.forget is None:
            return None
        if not self.policy.evicts:
            raise MementoError("forget needs eviction, but the policy keeps every block (full)")
        if self.decode is None:
            raise MementoError("forget matches a block's text: build the Engine with `decode` (ReferenceEngine does)")
        return forgetter(sampling.forget, self.decode)

    def _capped(self, row: Row) -> int | None:
        """The token the policy puts next in place of sampling: `<|block_end|>` (a block at `max_block_tokens`) or
        `</think>` (`max_blocks` blocks written); None: sample."""
        policy, state = self.policy, row.labeller.state
        if policy.max_block_tokens and state is State.BLOCK:
            opened = len(row.ids) - 1 - max(i for i, k in enumerate(row.kind) if k == Kind.BLOCK_START)
            if opened >= policy.max_block_tokens:
                return self.special.block_end
        if policy.max_blocks and state is State.THINK and row.labeller.index + 1 >= policy.max_blocks:
            return self.special.think_end
        return None

    def _stop(self, row: Row, prompt: int, token: int, sampling: Sampling, stop) -> str | None:
        if token in self.eos:
            return "stop"
        if stop is not None and stop(row.ids):
            return "stop"
        if len(row.ids) - prompt >= sampling.max_new_tokens:
            return "length"
        if self.context and len(row.ids) >= self.context:
            return "length"
        return None

    def _completion(self, prompt: list[int], row: Row, reason: str, started: float, logits) -> Completion:
        ids = row.ids[len(prompt) :]
        seconds = time.perf_counter() - started
        timeline = row.kv_timeline
        g = self.geometry
        held = np.asarray(timeline, dtype=np.int64) * (g.layers - g.sliding_layers)  # layer-tokens held
        if row.sliding_timeline:  # a hybrid model: its sliding-window layers hold their own tokens
            held = held + np.asarray(row.sliding_timeline, dtype=np.int64) * g.sliding_layers
        kv_bytes = held * g.layer_bytes_per_token
        stats = KVStats(
            prompt_tokens=len(prompt),
            generated_tokens=len(ids),
            blocks=row.labeller.index + 1,
            evictions=row.evictions,
            evicted_tokens=row.evicted_tokens,
            peak_kv_tokens=max(timeline),
            final_kv_tokens=timeline[-1],
            peak_kv_bytes=int(kv_bytes.max()),
            final_kv_bytes=int(kv_bytes[-1]),
            auc_gb_ktok=auc_gb_ktok(kv_bytes[row.prefill_steps :]),
            seconds=seconds,
            ms_per_token=1000 * seconds / max(len(ids), 1),
            kv_timeline=list(timeline),
            prefill_steps=row.prefill_steps,
            forgotten=row.forgotten,
        )
        return Completion(list(prompt), ids, reason, stats, torch.stack(logits) if logits else None)
