#!/usr/bin/env bash
# The device check (tools/gpu_check.py): what only a GPU shows, in under 8 minutes on one H200.
#
#   bash scripts/gpu_check.sh --prepare   here: the wheels the device lacks into .whl/ (megatron-core for
#                                         cp312, math-verify and its needs, mmr1-mega itself), at the versions
#                                         of requirements/lock-py312.txt; refuses a set over 60 MiB
#   bash scripts/gpu_check.sh --dry-run   here, on the CPU: --prepare, then the checks at toy sizes, then the
#                                         report validated: the wiring is tested before a device is spent on it
#   bash scripts/gpu_check.sh             on the device (Python 3.12, torch, triton, transformers there; no
#                                         network): installs .whl/ into /tmp/site, runs every check, report in
#                                         $OUT/gpu_check.json (device tool: run with carry [".whl"]);
#                                         all checks but bench_step, which runs with ONLY=bench_step
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-device}"
lock=requirements/lock-py312.txt
# what the device image lacks (its package list: /work/.library/device/KINDS.md), and transformers: the
# image's 5.17 is older than the version the suite passed with; versions from the lock
CARRIED=(megatron-core math-verify latex2sympy2_extended antlr4-python3-runtime transformers)
MAX_MB=60

pinned() { grep -i "^$1==" "$lock" | head -1; }

prepare() {
  local py="${PYTHON:-.venv/bin/python}"
  rm -rf .whl && mkdir -p .whl
  local specs=()
  for name in "${CARRIED[@]}"; do
    spec=$(pinned "$name") || { echo "gpu_check: $name is not pinned in $lock" >&2; exit 1; }
    specs+=("$spec")
  done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${specs[@]}" 2>&1 \
    | grep -v "is ignored" || true
  "$py" -m pip wheel -q --no-deps -w .whl . 2>&1 | grep -v -e "is ignored" -e "^  " -e "^$" || true
  local n; n=$(ls .whl/*.whl | wc -l)
  [ "$n" = $(( ${#CARRIED[@]} + 1 )) ] || { echo "gpu_check: expected $(( ${#CARRIED[@]} + 1 )) wheels, got $n" >&2; ls .whl >&2; exit 1; }
  local mb; mb=$(du -sm .whl | cut -f1)
  [ "$mb" -le "$MAX_MB" ] || { echo "gpu_check: .whl is $mb MiB, over $MAX_MB (the device takes 64 MiB a call)" >&2; exit 1; }
  echo "gpu_check: .whl ready, $n wheels, $mb MiB:"; ls .whl
}

case "$mode" in
  --prepare)
    prepare ;;
  --dry-run)
    prepare
    out="${OUT:-$(mktemp -d)}"
    # mmr1-mega from its wheel, as the device will import it (not this checkout); the rest from .venv
    site=$(mktemp -d)
    .venv/bin/python -m pip install -q --no-index --no-deps --target "$site" .whl/mmr1_mega-*.whl
    export PYTHONPATH="$site" TRITON_INTERPRET=1 TORCHDYNAMO_DISABLE=1 WANDB_MODE=offline
    .venv/bin/python -P -c "import mmr1_mega; assert mmr1_mega.__file__.startswith('$site'), mmr1_mega.__file__"
    .venv/bin/python tools/gpu_check.py --dry-run --out "$out/gpu_check.json" || true
    .venv/bin/python tools/gpu_check.py --dry-run --validate --out "$out/gpu_check.json" ;;
  device)
    [ -d .whl ] || { echo "gpu_check: no .whl/: run --prepare here and carry .whl" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 WANDB_MODE=disabled
    out="${OUT:-/tmp/gpu_check}"; mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia_smi.csv" || true
    # ONLY=bench_step (or any comma-separated subset): those checks, in a report of their own
    only=(); report=gpu_check.json
    if [ -n "${ONLY:-}" ]; then only=(--only "$ONLY"); report="gpu_check_${ONLY//,/_}.json"; fi
    python3 tools/gpu_check.py "${only[@]}" --out "$out/$report" 2>&1 | tee "$out/${report%.json}.log"
    python3 tools/gpu_check.py "${only[@]}" --validate --out "$out/$report" ;;
  *)
    echo "usage: bash scripts/gpu_check.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac
