#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) to run iotfleet from this checkout:
# the Debian packages the lab and the tests use, and a virtualenv in .venv with iotfleet,
# its dependencies and the development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-system-deps.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstall only when the dependency list or the tested versions changed since the last bootstrap.
stamp=.venv/.iotfleet-deps
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'
  echo "$want" >"$stamp"
fi
