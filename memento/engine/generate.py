"""`ReferenceEngine`: Memento generation on text, over the token-id `Engine` (`memento.engine.batch`).

This layer applies the chat template to each prompt, hands the ids to the engine, and decodes what comes back; stop
strings are checked on the decoded tail. The engine does the rest: batching with continuous refill, physical KV
eviction, sampling and per-request KV statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from memento.core.chat import encode_chat, encode_messages, memento_ids
from memento.core.errors import MementoError
from memento.core.kv import Comparison, compare
from memento.core.policy import EvictionPolicy
from memento.core.spans import Kind
from memento.engine.batch import Completion, Engine, KVStats, Processor
from memento.engine.sampling import Sampling

__all__ = ["Completion", "Generation", "KVStats", "ReferenceEngine"]


@dataclass
class Generation(Completion):
    prompt: str = ""
    text: str = ""  # the completion, special tokens included

    def to_dict(self) -> dict:
        from memento.core.format import recover

        out = {"prompt": self.prompt, "text": self.text, "ids": self.ids, "finish_reason": self.finish_reason}
        recovered = recover(self.text.removesuffix("<|im_end|>"), self.prompt)
        out["trace"] = {
            "blocks": [{"text": b.text, "memento": b.memento} for b in recovered.trace.blocks],
            "answer": recovered.trace.answer,
            "complete": not recovered.dropped,
        }
        out["stats"] = asdict(self.stats)
        return out


class ReferenceEngine:
    """Text in, text out: `generate(prompts)` -> one `Generation` per prompt (the user message; the chat template is
    applied), with the completion's ids, text, finish reason and KV statistics."""

    def __init__(self, model, tokenizer, policy: EvictionPolicy | None = None):
        self.tokenizer = tokenizer
        special = memento_ids(tokenizer)  # a clear error with the fix when the tokens are missing
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        context = getattr(model.config, "max_position_embeddings", None)
        self.engine = Engine(model, special, policy, eos, context, self.decode)
        self.model, self.policy, self.special, self.geometry = model, self.engine.policy, special, self.engine.geometry

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        policy: EvictionPolicy | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        add_tokens: bool = False,
    ) -> ReferenceEngine:
        """Load a model folder. `add_tokens` adds missing Memento tokens (untrained: for plumbing tests only)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from memento.tokenizer import give_memento_tokens

        path = Path(path)
        if not path.is_dir():
            raise MementoError(f"--model {path}: not a folder with a Hugging Face model")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not add_tokens:
            memento_ids(tokenizer)  # missing tokens: say so (and the fix) before loading the weights
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        if add_tokens:
            give_memento_tokens(model, tokenizer)
        return cls(model, tokenizer, policy)

    def encode(self, prompt: str | list[dict]) -> list[int]:
        """A one-turn chat of `prompt`, or a multi-turn chat (a list of messages) ready for the next answer."""
        ids = (
            encode_chat(self.tokenizer, prompt).ids
            if isinstance(prompt, str)
            else encode_messages(self.tokenizer, prompt)
        )
        context = self.engine.context
        if context and len(ids) >= context:
            raise MementoError(f"the prompt has {len(ids)} tokens; the model's context is {context}")
        return ids

    def room(self, prompt: str | list[dict]) -> int | None:
        """How many new tokens the model's context leaves after `prompt` (None: no limit)."""
        context = self.engine.context
        return context - len(self.encode(prompt)) if context else None

    def kv_comparison(self, generation: Completion) -> Comparison:
        """The KV a generation held under this engine's policy beside what full attention would have held."""
        spans = generation.spans(self.special, fed=True, turns=self.policy.compact_prompt)
        return compare(spans, self.policy, self.geometry, len(generation.prompt_ids))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def generate(
        self,
        prompts: list[str | list[dict]] | str,
        sampling: Sampling | None = None,
        batch_size: int = 16,
        force: list[list[int]] | None = None,
        on_token: Callable[[int, int, Kind, int], None] | None = None,
        return_logits: bool = False,
        processor: Processor | None = None,
        seeds: list[int] | None = None,
        return_logprobs: bool = False,
    ) -> list[Generation]:
        """Generate for every prompt (a text, or a chat's messages); the arguments are `Engine.generate`'s,
        `sampling.stop` holds stop strings and `sampling.forget` a regular expression on block texts (selective
        strict forgetting: the blocks it matches are forgotten as in restart mode, the others evicted normally)."""
        one = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], dict))  # a text, or one chat
        prompts = [prompts] if one else list(prompts)
        sampling = sampling or Sampling()
        stop = None
        if sampling.stop:

            def stop(ids: list[int]) -> bool:
                tail = self.decode(ids[-32:])
                return any(s in tail for s in sampling.stop)

        done = self.engine.generate(
            [self.encode(p) for p in prompts],
            sampling,
            batch_size,
            force,
            on_token,
            return_logits,
            processor,
            seeds,
            stop,
            return_logprobs,
        )
        return [Generation(**vars(c), prompt=p, text=self.decode(c.ids)) for p, c in zip(prompts, done, strict=True)]
