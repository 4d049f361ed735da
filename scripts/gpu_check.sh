#!/usr/bin/env bash
# The CUDA-only checks (scripts/gpu_check.py) in one command, for a CUDA machine with torch + transformers installed
# (no vLLM, no network). Writes OUT/gpu_check.md (OUT: the first argument, else $OUT, else the current folder).
# Exits 0 when every check passed; takes well under 8 minutes (tiny models).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-${OUT:-.}}"
mkdir -p "$out"
exec timeout 480 python "$here/scripts/gpu_check.py" --device "${GPU_CHECK_DEVICE:-cuda}" --out "$out/gpu_check.md"
