#!/usr/bin/env bash
# Write requirements/lock-pyXY.txt from an environment the test suite has just passed in:
#
#   bash scripts/setup.sh --latest [--python 3.12] && [VENV=DIR] bash scripts/test.sh && bash scripts/lock.sh [DIR]
#
# The lock is that environment's `pip freeze` (the project itself left out), so it pins every package,
# transitive ones included, at the version the suite ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="$venv/bin/python"
[ -x "$python" ] || { echo "lock.sh: no environment at $venv (run scripts/setup.sh first)" >&2; exit 1; }
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
out="requirements/lock-py$pyver.txt"
mkdir -p requirements
{
  echo "# pip freeze of $venv ($("$python" -c 'import sys; print(sys.version.split()[0])')), written by scripts/lock.sh on $(date -u +%F)"
  echo "# after the test suite passed in it. Installed with --no-deps by scripts/setup.sh; --latest ignores it."
  "$python" -m pip freeze --exclude-editable --all | grep -v -e "^mmr1-mega" -e "^pip=="
} > "$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages)"
