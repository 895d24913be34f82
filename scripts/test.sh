#!/usr/bin/env bash
# The test suite (CPU). TRITON_INTERPRET runs the Triton kernels on CPU; TORCHDYNAMO_DISABLE skips
# torch.compile of megatron's fused helpers (seconds per process on CPU for nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1 TORCHDYNAMO_DISABLE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
