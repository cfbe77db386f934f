#!/usr/bin/env bash
# Set up .venv for h3r: idempotent, safe to run before every command.
#  - a machine with torch already installed (a GPU image): the venv sees the system's
#    torch/triton/cupy (--system-site-packages) and pip keeps them;
#  - a machine without torch: the CPU build of torch, never the multi-GB CUDA build
#    (set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu where PyPI's default is CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${H3R_VENV:-.venv}
EXTRAS=${H3R_EXTRAS:-test}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
fi
stamp="$VENV/.h3r-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
"$VENV/bin/python" -c "import torch; print(f'h3r environment ready: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
