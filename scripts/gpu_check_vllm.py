"""The checks of Memento's vLLM extension that need CUDA vLLM (issue #25), as one script with a short report.

Run on a CUDA machine with vLLM 0.32 (`MEMENTO_VLLM='vllm==0.32.0' make setup`): `python scripts/gpu_check_vllm.py
[--out gpu_check_vllm.md] [--backend FLASHINFER]`. Nothing to download: the model is the toy Memento checkpoint in
the repository (bf16, 4 layers). Exits 0 when every check passed, 2 without CUDA or vLLM; takes a few minutes (four
engine starts). The checks that need no vLLM (the KV mover in FlashAttention / FlashInfer layouts, its timings) are
in `scripts/gpu_check.py`.

1. The engine starts with `make_llm`'s defaults (eager, the model's dtype, vLLM's attention backend unless
   `--backend`): the mover learns the CUDA backend's KV layout at start-up; greedy generation under keep 0 evicts.
2. CUDA graphs (`enforce_eager=False`) give the eager run's greedy tokens and evictions.
3. An fp8 KV cache is refused at start-up, and `check_supported` names its fix.
4. Speculative decoding is refused at start-up, and `check_supported` names its fix.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_check import report  # noqa: E402  (scripts/ is on the path when run as a script)

from memento.core.errors import MementoError  # noqa: E402
from memento.core.policy import EvictionPolicy  # noqa: E402

TOY = ROOT / "memento" / "toy" / "checkpoints" / "curriculum"
SPECULATIVE = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
BACKEND: dict = {}  # --backend: {"attention_backend": name}


def start(**kwargs):
    from memento.engine.vllm import make_llm

    args = {"max_model_len": 1024, "gpu_memory_utilization": 0.4, "seed": 0, **BACKEND, **kwargs}
    return make_llm(str(TOY), EvictionPolicy(0), **args)


def stop(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def greedy(llm) -> tuple[list[list[int]], list[int]]:
    """Greedy completions of four toy problems: their tokens and each one's evictions."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from memento.core.chat import encode_chat
    from memento.synthetic.orbit import orbit_traces

    tokenizer = AutoTokenizer.from_pretrained(TOY)
    ids = [encode_chat(tokenizer, t.problem).ids for t in orbit_traces(4, seed=31, split="test")]
    params = SamplingParams(temperature=0, max_tokens=900)
    outs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    return tokens, [(o.kv_transfer_params or {}).get("memento", {}).get("evictions", 0) for o in outs]


RUNS: dict[str, tuple] = {}  # eager / graphs: (tokens, evictions)


def run(name: str, lines: list[str], **kwargs) -> bool:
    llm = start(**kwargs)
    try:
        RUNS[name] = greedy(llm)
    finally:
        stop(llm)
    tokens, evictions = RUNS[name]
    lines.append(f"| {name} | {sum(map(len, tokens))} tokens | {sum(evictions)} evictions |")
    return sum(evictions) > 0


def defaults(lines: list[str]) -> bool:
    return run("eager (the defaults)", lines)


def graphs(lines: list[str]) -> bool:
    ok = run("CUDA graphs", lines, enforce_eager=False)
    eager = RUNS.get("eager (the defaults)")
    same = eager is not None and RUNS["CUDA graphs"] == eager
    lines.append(f"| graphs vs eager | {'same tokens and evictions' if same else 'DIFFERENT'} | |")
    return ok and same


def refused(lines: list[str], fix: str, **kwargs) -> bool:
    """The engine does not start with these settings, and `check_supported` names `fix` for them."""
    from vllm.engine.arg_utils import EngineArgs

    from memento.engine.vllm import engine_args
    from memento.engine.vllm.config import check_supported

    try:
        stop(start(**kwargs))
        lines.append("| engine start | STARTED |")
        return False
    except Exception as e:
        lines.append(f"| engine start | refused ({type(e).__name__}: {str(e).splitlines()[0][:100]}) |")
    config = EngineArgs(model=str(TOY), **engine_args(EvictionPolicy(0), **BACKEND, **kwargs)).create_engine_config()
    try:
        check_supported(config)
        message = "no error"
    except MementoError as e:
        message = str(e)
    lines.append(f"| check_supported | {message[:200]} |")
    return fix in message


def fp8(lines: list[str]) -> bool:
    return refused(lines, "kv_cache_dtype=fp8", kv_cache_dtype="fp8")


def speculative(lines: list[str]) -> bool:
    return refused(lines, "remove --speculative-config", speculative_config=SPECULATIVE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_vllm.md"))
    parser.add_argument("--backend", help="vLLM's attention backend (e.g. FLASHINFER); default: vLLM's choice")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device is visible: these checks need CUDA vLLM", file=sys.stderr)
        return 2
    from memento.engine.vllm import environment, require_vllm

    environment()
    try:
        vllm = require_vllm()
    except MementoError as e:
        print(e, file=sys.stderr)
        return 2
    if args.backend:
        BACKEND["attention_backend"] = args.backend
    lines = [
        "# vLLM GPU check",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {torch.cuda.get_device_name()}, vLLM {vllm.__version__}, "
        f"torch {torch.__version__}, python {platform.python_version()}, attention backend {args.backend or 'auto'}.",
        "",
    ]
    runs = ["| run | tokens | evictions |", "|---|---|---|"]
    refusal = ["| step | result |", "|---|---|"]
    checks = [
        ("The engine starts with the defaults and evicts", runs, defaults),
        ("CUDA graphs give the eager greedy tokens", runs, graphs),
        ("An fp8 KV cache is refused at start-up", refusal, fp8),
        ("Speculative decoding is refused at start-up", refusal, speculative),
    ]
    return report(checks, lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
