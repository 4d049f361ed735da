"""Where RL rollouts come from: the reference engine (sharing the trainer's weights) or the vLLM extension (a running
engine whose weights are replaced after every update). Both evict blocks physically while sampling and return each
sampled token's log-prob, the ones the train/inference mismatch check compares with the trainer's."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from memento.core.chat import encode_chat, memento_ids
from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy
from memento.engine.generate import ReferenceEngine
from memento.engine.sampling import Sampling
from memento.rl.config import Rollout


@dataclass
class Sample:
    prompt_ids: list[int]
    ids: list[int]  # the completion
    text: str  # the completion, special tokens included (what the task's checker reads)
    logprobs: list[float]  # of each completion token, as sampled
    steered: list[bool]  # True where the block cap put the token (not the model's choice: left out of the loss)
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
        return [
            Sample(g.prompt_ids, g.ids, g.text, g.logprobs, g.steered, g.stats.peak_kv_tokens, g.stats.blocks)
            for g in done
        ]

    def sync(self, model) -> None:
        """Nothing to do: the engine samples with the model being trained."""

    def close(self) -> None:
        pass


class VLLMRollouts:
    """Rollouts on the vLLM extension. After each update `sync` writes the weights to a file and the workers load
    them into the running model (`MementoWorker.memento_load_weights`). vLLM's log-probs are the raw model's, so
    rollouts run at temperature 1 (the paper's RL temperature)."""

    def __init__(self, model: str, tokenizer, policy: EvictionPolicy, config: Rollout, max_model_len: int, seed: int):
        if config.temperature != 1.0:
            raise MementoError(
                f"rollout.temperature {config.temperature}: vLLM rollouts return the raw model's log-probs, so they "
                "sample at temperature 1 (use the reference engine for another temperature)"
            )
        from memento.engine.vllm import make_llm

        self.tokenizer, self.policy, self.config = tokenizer, policy, config
        self.special = memento_ids(tokenizer)
        self.llm = make_llm(model, policy, dtype="float32", max_model_len=max_model_len, seed=seed)
        self.folder = Path(tempfile.mkdtemp(prefix="memento-rl-weights-"))

    def sample(self, prompts: list[str], seeds: list[int]) -> list[Sample]:
        from vllm import SamplingParams

        from memento.engine.vllm.logits import imposed

        c = self.config
        ids = [encode_chat(self.tokenizer, p).ids for p in prompts]
        extra = {"memento_policy": asdict(self.policy)}
        params = [
            SamplingParams(temperature=1.0, max_tokens=c.max_new_tokens, seed=s, logprobs=0, extra_args=extra)
            for s in seeds
        ]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        samples = []
        for prompt, out in zip(ids, outs, strict=True):
            o = out.outputs[0]
            tokens = list(o.token_ids)
            logprobs = [step[t].logprob for step, t in zip(o.logprobs, tokens, strict=True)]
            kv = (out.kv_transfer_params or {}).get("memento", {})
            text = self.tokenizer.decode(tokens, skip_special_tokens=False)
            steered = imposed(self.policy, self.special, prompt, tokens)
            blocks, peak = kv.get("blocks", 0), kv.get("peak_kv_tokens", 0)
            samples.append(Sample(prompt, tokens, text, logprobs, steered, peak, blocks))
        return samples

    def sync(self, model) -> None:
        """The trainer's weights into the running engine (tied weights once: vLLM ties them again)."""
        from safetensors.torch import save_file

        path = self.folder / "weights.safetensors"
        seen, state = set(), {}
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                state[name] = tensor.detach().clone()
        save_file(state, str(path))
        self.llm.collective_rpc("memento_load_weights", args=(str(path),))

    def close(self) -> None:
        import shutil

        self.llm.llm_engine.engine_core.shutdown()
        shutil.rmtree(self.folder, ignore_errors=True)
