"""What one `memento eval` run is: the model, the task, the sampling, the policy and the engine, validated.

Saved as `run.json` in the run's folder (`memento.eval.run`); a folder never mixes runs of other settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from memento.core.errors import MementoError
from memento.core.policy import EvictionPolicy

ENGINES = ("reference", "vllm", "server")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EvalSettings:
    model: str
    task: str
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 4096
    seed: int = 0
    policy: dict = field(default_factory=lambda: asdict(EvictionPolicy(0)))  # as saved; an EvictionPolicy is taken too
    engine: str = "reference"  # reference | vllm | server (a running `memento serve`, its URL given at run time)
    dtype: str = "auto"  # auto: float32 on the reference engine; on vLLM the model's own (fp32 on CPUs without bf16)
    protocol: str = ""  # the protocol the sampling settings came from (`memento.eval.protocol`); "": none named
    answer_in_open_think: bool = False  # read a completion cut off inside <think> as an answer (the paper: no answer)

    def __post_init__(self):
        if isinstance(self.policy, EvictionPolicy):
            object.__setattr__(self, "policy", asdict(self.policy))
        if self.engine not in ENGINES:
            raise MementoError(f"--engine {self.engine}: choose from {', '.join(ENGINES)}")
        if self.samples < 1:
            raise MementoError(f"--n-samples {self.samples}: need at least one sample per problem")
        if self.samples > 1 and self.temperature == 0:
            raise MementoError(f"--n-samples {self.samples} with --temperature 0: greedy samples are all the same")
        if self.protocol:
            from memento.eval.protocol import get

            get(self.protocol)  # a known name
        if self.dtype not in DTYPES:
            raise MementoError(f"--dtype {self.dtype}: choose from {', '.join(DTYPES)}")

    def deviations(self) -> list[str]:
        """Where the sampling settings depart from the protocol's, in words (empty without a protocol)."""
        if not self.protocol:
            return []
        from memento.eval.protocol import deviations, get

        return deviations(get(self.protocol), self.task, asdict(self), self.model)

    @property
    def eviction(self) -> EvictionPolicy:
        return EvictionPolicy(**self.policy)
