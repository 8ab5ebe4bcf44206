#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: lint, types, unit tests, and the
# integration tests on a real lab (Debian hosts under systemd-nspawn, bookworm and trixie).
# Extra arguments go to both pytest runs (e.g. scripts/test.sh -k mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/bootstrap.sh

echo "== lint (ruff)"
.venv/bin/ruff check .
echo "== format (ruff format --check)"
.venv/bin/ruff format --check .
echo "== types (mypy)"
.venv/bin/mypy
# Two pytest runs, both always: the unit tests on two workers (pytest-xdist), then the
# integration tests serially (one lab per suite, shared by the modules). --durations: the
# slowest tests, so a run shows where its time goes. Exit status: the first failure's.
status=0
run_pytest() {
    local rc=0
    .venv/bin/python -m pytest --durations=30 "$@" || rc=$?
    # 5: nothing collected, e.g. `-k` naming tests of the other run only.
    if [ "$rc" -eq 5 ] && [ "$extra" -gt 0 ]; then rc=0; fi
    if [ "$status" -eq 0 ]; then status=$rc; fi
}
extra=$#
echo "== unit tests (pytest -n 2)"
run_pytest -n 2 tests/unit "$@"
echo "== integration tests (pytest)"
run_pytest tests/integration "$@"
exit "$status"
