#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: lint, types, unit tests, and the
# integration tests on a real lab (Debian hosts under systemd-nspawn, bookworm and trixie).
# Extra arguments go to pytest (e.g. scripts/test.sh -k mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/bootstrap.sh

echo "== lint (ruff)"
.venv/bin/ruff check .
echo "== format (ruff format --check)"
.venv/bin/ruff format --check .
echo "== types (mypy)"
.venv/bin/mypy
echo "== unit and integration tests (pytest)"
# --durations: the slowest tests, so a run shows where its time goes.
exec .venv/bin/python -m pytest --durations=30 tests/unit tests/integration "$@"
