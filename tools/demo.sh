#!/usr/bin/env bash
# The dualblade demo in one command on a fresh machine (no root needed):
#
#   tools/demo.sh [demo.py options]
#
# Creates ./.venv with the project installed if it is missing or incomplete (pip install -r
# requirements-dev.txt: the pinned CPU torch and transformers, and the project in editable mode),
# then runs tools/dualblade_tools/demo.py: a dualbladed on a file namespace in a temp dir, a KV block round trip
# and restore across a daemon restart, and greedy generation with DualBladeCache on that daemon.
# PYTHON picks the interpreter that creates the venv (default: python3, which must be >= 3.10).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
py="$venv/bin/python"

if [[ ! -x "$py" ]]; then
    echo "creating $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv"
fi
if ! "$py" -c 'import dualblade, dualbladed, dualblade_tools, torch, transformers' 2>/dev/null; then
    echo "installing the project into $venv (requirements-dev.txt)" >&2
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet -r requirements-dev.txt
fi
exec "$py" "$repo/tools/dualblade_tools/demo.py" "$@"
