#!/usr/bin/env bash
# Create .venv and install the project with its test extra. Idempotent: a second run
# only re-installs when pyproject.toml or constraints.txt changed. Usage: bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.ssl-medseg-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]" --config-settings editable_mode=compat
    echo "$want" > "$stamp"
fi
