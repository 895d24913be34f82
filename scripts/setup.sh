#!/usr/bin/env bash
# Create a virtual environment and install mmr1-mega with its test extras. Idempotent.
#
#   bash scripts/setup.sh                     # .venv on Python 3.11, every package pinned by requirements/lock-py311.txt
#   bash scripts/setup.sh --python 3.12       # .venv-py312, pinned by requirements/lock-py312.txt (megatron-core 0.19)
#   bash scripts/setup.sh --latest            # resolve pyproject's ranges afresh instead of the lock
#   bash scripts/setup.sh --venv DIR          # another place for the environment
#
# The lock files are `pip freeze` of environments the whole test suite passed in (scripts/lock.sh writes them);
# they are installed with --no-deps, so what CI runs is exactly what was tested. pyproject.toml keeps ranges
# for users installing beside their own stack.
set -euo pipefail
cd "$(dirname "$0")/.."

want_python="" venv="" latest=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) want_python="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --latest) latest=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# the interpreter: PYTHON, else pythonX.Y (from PATH, else from pyenv's versions), else python3
find_python() {
  local v="$1"
  if command -v "python$v" >/dev/null 2>&1 && "python$v" -c "" 2>/dev/null; then echo "python$v"; return; fi
  local root; root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for p in "$root"/versions/"$v"*/bin/python"$v"; do
    if [ -x "$p" ]; then echo "$p"; return; fi
  done
  echo "setup.sh: no Python $v found (PATH or pyenv); install it or set PYTHON=/path/to/python$v" >&2
  exit 1
}
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -n "$want_python" ]; then PY=$(find_python "$want_python")
else PY=python3
fi
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
if [ -z "$venv" ]; then
  if [ -n "$want_python" ]; then venv=".venv-py$pyver"; else venv=".venv"; fi
fi
lock="requirements/lock-py$pyver.txt"
if [ "$latest" = 0 ] && [ ! -f "$lock" ]; then
  echo "setup.sh: no lock file $lock for Python ${pyver:0:1}.${pyver:1}: use --latest to resolve pyproject's ranges" >&2
  exit 1
fi

quiet() { grep -v -e "is ignored" -e "sglang .* requires" -e "dependency resolver" -e "^  " -e "^$" || true; }
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
python="$venv/bin/python"
"$python" -m pip install -q --upgrade pip 2>&1 | quiet

if [ "$latest" = 0 ]; then
  # exactly the locked versions; the project itself without resolving anything more
  "$python" -m pip install -q --no-deps -r "$lock" 2>&1 | quiet
  "$python" -m pip install -q --no-deps -e . 2>&1 | quiet
else
  # torch first and pinned for CPU work: an unpinned torch would pull a multi-GB CUDA build (on Python 3.11
  # the local disk holds a CPU wheel of 2.13.0; other Pythons get PyPI's build of TORCH_VERSION).
  # On a GPU machine install the torch build you want before running this script.
  if ! "$python" -c "import torch" 2>/dev/null; then
    default_torch=2.13.0
    [ "$pyver" = 311 ] || default_torch=2.14.1
    "$python" -m pip install -q "torch==${TORCH_VERSION:-$default_torch}" 2>&1 | quiet
  fi
  "$python" -m pip install -q -e ".[dev]" 2>&1 | quiet
  # SGLang's own request types, read from its source by the adapter's payload tests (it cannot run here)
  "$python" -m pip install -q --no-deps "sglang==0.5.23" 2>&1 | quiet
  # the light modules sglang's weight-sync / request code imports (not its GPU stack)
  "$python" -m pip install -q orjson pybase64 starlette msgspec pyzmq ipython aiohttp 2>&1 | quiet
fi
"$python" -c "import torch, megatron.core, transformers, triton, mmr1_mega; print('mmr1-mega env ready ($venv): python', '.'.join(map(str, __import__('sys').version_info[:3])), '| torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| transformers', transformers.__version__)"
