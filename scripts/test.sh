#!/usr/bin/env bash
# The test suite (CPU). TRITON_INTERPRET runs the Triton kernels on CPU; TORCHDYNAMO_DISABLE skips
# torch.compile of megatron's fused helpers (seconds per process on CPU for nothing).
#   bash scripts/test.sh [pytest args]             # in .venv
#   VENV=.venv-py312 bash scripts/test.sh [args]   # in another environment made by scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1 TORCHDYNAMO_DISABLE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
exec "${VENV:-.venv}/bin/python" -m pytest -q --timeout=900 "$@"
