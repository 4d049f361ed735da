"""`MementoLogits`: the policy's generation limits, and teacher forcing, as a vLLM logits processor (worker process).

- `max_block_tokens`: a block that reached the limit gets `<|block_end|>`; `max_blocks`: after the last allowed
  memento, `</think>` — the same steering as the reference engine.
- `SamplingParams(extra_args={"memento_force": [ids]})`: the completion is these tokens, whatever the model prefers
  (drives any model through a recorded Memento trace; vLLM's logprobs stay the model's own, computed before
  processors).
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from memento.core.errors import MementoError
from memento.core.format import State
from memento.core.spans import Kind, Labeller
from memento.engine.vllm.config import request_forget, request_policy, settings

FORCE = "memento_force"


class _Request:
    """One request's view: labels its tokens incrementally and says which token, if any, is imposed next."""

    def __init__(self, policy, special, force: list[int] | None):
        self.policy, self.special, self.force = policy, special, force
        self.labeller = Labeller(special, strict=False)
        self.seen = 0
        self.block_start = -1  # sequence index of the open block's <|block_start|>

    def __call__(self, prompt: list[int], output: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.seen == 0:
            for t, token in enumerate(prompt):
                self._push(token, t)
            self.seen = len(prompt)
        while self.seen < len(prompt) + len(output):
            self._push(output[self.seen - len(prompt)], self.seen)
        token = self.imposed(len(output))
        if token is None:
            return logits
        forced = torch.full_like(logits, float("-inf"))
        forced[token] = 0.0
        return forced

    def _push(self, token: int, t: int) -> None:
        kind, _ = self.labeller.push(token, t)
        if kind == Kind.BLOCK_START and token == self.special.block_start:
            self.block_start = t
        self.seen = t + 1

    def imposed(self, n_output: int) -> int | None:
        """The token forced after `n_output` completion tokens (all pushed), or None: the model samples."""
        if self.force is not None:
            return self.force[n_output] if n_output < len(self.force) else None
        state, policy = self.labeller.state, self.policy
        opened = self.seen - 1 - self.block_start  # tokens in the open block so far
        if policy.max_block_tokens and state is State.BLOCK and opened >= policy.max_block_tokens:
            return self.special.block_end
        if policy.max_blocks and state is State.THINK and self.labeller.index + 1 >= policy.max_blocks:
            return self.special.think_end
        return None


def imposed(policy, special, prompt: list[int], tokens: list[int]) -> list[bool]:
    """Which of a completion's `tokens` the policy's caps put in place of a sampled one (this processor's rule,
    replayed: RL leaves them out of the loss)."""
    request = _Request(policy, special, None)
    for t, token in enumerate(prompt):
        request._push(token, t)
    out = []
    for i, token in enumerate(tokens):
        out.append(request.imposed(i) == token)
        request._push(token, len(prompt) + i)
    return out


class MementoLogits(AdapterLogitsProcessor):
    def __init__(self, vllm_config, device, is_pin_memory):
        super().__init__(vllm_config, device, is_pin_memory)
        self.memento = settings(vllm_config)

    @classmethod
    def validate_params(cls, params) -> None:
        """Checked in the front end (a bad request gets HTTP 400 instead of reaching the engine)."""
        from memento.core.policy import EvictionPolicy

        try:
            request_policy(EvictionPolicy(), params)
            request_forget(params)
        except MementoError as e:
            raise ValueError(str(e)) from e
        force = (params.extra_args or {}).get(FORCE)
        if force is not None and not (isinstance(force, list) and all(isinstance(t, int) and t >= 0 for t in force)):
            raise ValueError(f"extra_args.{FORCE} must be a list of token ids")

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        force = (params.extra_args or {}).get(FORCE)
        policy = request_policy(self.memento.policy, params)
        if force is None and not (policy.max_block_tokens or policy.max_blocks):
            return None
        return _Request(policy, self.memento.special, list(force) if force is not None else None)
