"""`precision: auto`: bf16 only where the CPU runs it natively; forced choices; the reason is always given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from memento.core.errors import MementoError
from memento.core.precision import resolve


def test_forced_choices_and_bad_names():
    assert resolve("bf16") == ("bf16", "asked for")
    assert resolve("fp32", "cuda").dtype == torch.float32
    with pytest.raises(MementoError, match="auto, bf16, fp32"):
        resolve("fp16")


def test_auto_follows_the_cpu_flags():
    choice = resolve("auto")
    from memento.core.precision import _onednn_capped

    native = (
        torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
        and _onednn_capped() is None
    )
    assert choice.precision == ("bf16" if native else "fp32")
    assert choice.reason.startswith(("auto: CPU capability", "auto: ONEDNN_MAX_CPU_ISA", "auto: DNNL_MAX_CPU_ISA"))


def test_a_onednn_cap_below_avx512_means_fp32(monkeypatch):
    from memento.core.precision import _onednn_capped

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert _onednn_capped() == "ONEDNN_MAX_CPU_ISA=AVX2"
    assert resolve("auto").precision == "fp32"
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):  # else the capability is the first reason
        assert resolve("auto").reason == "auto: ONEDNN_MAX_CPU_ISA=AVX2: oneDNN cannot use its bf16 kernels"
    for uncapped in ("ALL", "AVX512_CORE_AMX", "avx512_core_bf16"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", uncapped)
        assert _onednn_capped() is None, uncapped


def test_the_avx2_code_path_chooses_fp32():
    """ATEN_CPU_CAPABILITY=avx2 (an AVX2-only CPU as ATen sees it) must give fp32, in a fresh interpreter."""
    code = "import json; from memento.core.precision import resolve; print(json.dumps(resolve('auto')))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    precision, reason = json.loads(done.stdout.strip().splitlines()[-1])
    assert precision == "fp32" and "CPU capability AVX2" in reason


def test_cuda_auto():
    choice = resolve("auto", "cuda")
    if not torch.cuda.is_available():
        assert choice == ("fp32", "auto: no CUDA device is visible")
    else:
        assert choice.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
