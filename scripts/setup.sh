#!/usr/bin/env bash
# Create .venv (Python 3.10+) and install mmr1-mega with its test extras. Idempotent; CPU torch by default.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first and pinned for CPU work: an unpinned torch would pull a multi-GB CUDA build.
# On a GPU machine install the torch build you want before running this script.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored" || true
fi
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
# SGLang's own request types, read from its source by the adapter's payload tests (it cannot run here)
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('sglang') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps "sglang==0.5.23" 2>&1 | grep -v "is ignored" || true
# the light modules sglang's weight-sync / request code imports (not its GPU stack)
python -m pip install -q orjson pybase64 starlette msgspec pyzmq ipython aiohttp 2>&1 \
  | grep -v -e "is ignored" -e "sglang .* requires" -e "dependency resolver" || true
python -c "import torch, megatron.core, transformers, triton; print('mmr1-mega env ready: torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| transformers', transformers.__version__)"
