"""Which floating-point precision to train and run in on this machine: `auto` picks bf16 only where it is fast.

Why: bf16 is not a free win on CPU. With native bf16 instructions (AVX512-BF16 or AMX) oneDNN runs bf16 GEMMs at
~1.4-2x fp32; on an AVX2-only CPU (many AMD EPYC machines) PyTorch falls back to a scalar path: a training step was
~6x *slower* than fp32 on such a CPU, 11-31x with the AVX2 path forced on an AVX512 one (`benchmarks/cpu_dtype.py`
records both on each machine). So:

    cuda   bf16 where the GPU supports it (Ampere and later), fp32 otherwise
    cpu    bf16 when ATen runs its AVX512 kernels (`torch.backends.cpu.get_cpu_capability()`, which honours
           ATEN_CPU_CAPABILITY), the CPU has AVX512-BF16 or AMX, and oneDNN is not capped below AVX512
           (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA); fp32 otherwise

`bf16` and `fp32` always force the choice. Every decision carries its reason, so the trainer's log and the CLI can
say why a run is in the precision it is in.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from memento.core.errors import MementoError

PRECISIONS = ("auto", "bf16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class Choice(NamedTuple):
    precision: str  # bf16 | fp32
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]


def _onednn_capped() -> str | None:
    """The oneDNN ISA cap when it excludes AVX512 (bf16 GEMMs then leave the native path), else None."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip()
        if value and value.upper() != "ALL" and "AVX512" not in value.upper() and "AMX" not in value.upper():
            return f"{name}={value}"
    return None


def cpu_bf16_native() -> tuple[bool, str]:
    """(True, why) when bf16 matrix products run on native instructions on this CPU, else (False, why)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return False, f"CPU capability {capability}: no native bf16, bf16 GEMMs take a slow path"
    capped = _onednn_capped()
    if capped:
        return False, f"{capped}: oneDNN cannot use its bf16 kernels"
    amx, avx512_bf16 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    if not (amx or avx512_bf16):
        return False, f"CPU capability {capability} without AVX512-BF16 or AMX: bf16 is emulated"
    return True, f"CPU capability {capability} with {'AMX' if amx else 'AVX512-BF16'}: native bf16"


def resolve(requested: str = "auto", device: str | torch.device | None = None) -> Choice:
    """The precision to use for `requested` (auto | bf16 | fp32) on `device` (default: CUDA if there is one, as the
    trainer's accelerator picks), with the reason."""
    if requested not in PRECISIONS:
        raise MementoError(f"precision must be one of {', '.join(PRECISIONS)}, got '{requested}'")
    if requested != "auto":
        return Choice(requested, "asked for")
    kind = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            return Choice("fp32", "auto: no CUDA device is visible")
        if torch.cuda.is_bf16_supported():
            return Choice("bf16", f"auto: {torch.cuda.get_device_name()} supports bf16")
        return Choice("fp32", f"auto: {torch.cuda.get_device_name()} has no bf16")
    if kind != "cpu":
        return Choice("fp32", f"auto: fp32 on {kind}")
    native, why = cpu_bf16_native()
    return Choice("bf16" if native else "fp32", f"auto: {why}")


def vllm_dtype(requested: str = "auto") -> str:
    """vLLM's `dtype` for `requested`: "auto" keeps vLLM's own choice (the checkpoint's dtype) on a GPU or a CPU with
    native bf16, and is "float32" on other CPUs, where a bf16 checkpoint would run on the slow path."""
    if requested != "auto" or torch.cuda.is_available() or cpu_bf16_native()[0]:
        return requested
    return "float32"
