"""``iotfleet check``: run the compliance suite (``iotfleet.compliance``) against an inventory.

pytest runs in a child process with pytest-xdist (one worker per broker, capped), writing
JUnit XML, the raw pytest output and ``results.json`` into the reports directory. From
``results.json`` the summary grouped by host is printed, the run is added to the history,
``report.html`` is made from the history, and the Prometheus textfile written (if asked).

Exit codes: 0 every check passed, 1 a check failed (or could not run), 2 usage or inventory
error (nothing was checked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
from rich.console import Console

from iotfleet.check.identities import choose_cast
from iotfleet.check.plan import CheckPlan, PlanError, plan_from_hosts, read_inventory
from iotfleet.check.results import RunResults, render_summary
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.secrets import SecretError
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.model import InventoryError
from iotfleet.pki import PkiError
from iotfleet.report import history as run_history
from iotfleet.report import page
from iotfleet.report.prometheus import write_textfile

MAX_WORKERS = 16  # hosts checked at once; each worker mostly waits on the network
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# pytest exit codes -> ours: tests failed -> 1; interrupted, internal error, usage error and
# "no tests collected" (a -m/-k that matches nothing) -> 2.
PYTEST_EXIT = {
    0: EXIT_OK,
    1: EXIT_FAILED,
    2: EXIT_USAGE,
    3: EXIT_USAGE,
    4: EXIT_USAGE,
    5: EXIT_USAGE,
}

JUNIT, HTML, RESULTS, LOG = "junit.xml", "report.html", "results.json", "pytest.log"


@dataclass(frozen=True)
class CheckRequest:
    inventory: Path
    reports: Path
    markexpr: str | None = None
    keyword: str | None = None
    parallel: int | None = None
    limit: tuple[str, ...] = ()
    probe_device: str | None = None
    cert_margin_days: float | None = None
    crl_margin_hours: float | None = None
    history: Path | None = None  # default: <reports>/history
    history_days: float = run_history.KEEP_DAYS
    prometheus: Path | None = None  # node_exporter textfile to write

    @property
    def history_dir(self) -> Path:
        return self.history or run_history.default_history(self.reports)


SUITE_PACKAGE = "iotfleet.compliance"
# The pytest settings of a compliance run (never the caller's pytest.ini or pyproject).
PYTEST_INI = "[pytest]\naddopts = -ra --strict-markers\n"
CHECK_EXTRA = "pip install 'iotfleet[check]'"
CHECK_MODULES = ("pytest", "testinfra", "xdist", "sslyze")


def suite_dir() -> Path | None:
    """Where the installed suite is (``iotfleet.compliance``); None without its extra."""
    if any(importlib.util.find_spec(name) is None for name in CHECK_MODULES):
        return None
    spec = importlib.util.find_spec(SUITE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def worker_count(plan: CheckPlan, parallel: int | None) -> int:
    """One worker per broker, capped (``--parallel`` caps it further)."""
    wanted = parallel if parallel is not None else MAX_WORKERS
    return max(1, min(wanted, len(plan.brokers), MAX_WORKERS))


def pytest_argv(request: CheckRequest, workers: int, dump: Path) -> list[str]:
    """The pytest command line for one run: the installed suite (``--pyargs``), with its own
    ini next to ``dump`` and the suite's directory as root (test ids are ``test_x.py::...``,
    from a checkout or a wheel alike)."""
    reports = request.reports
    suite = suite_dir()
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "--pyargs",
        SUITE_PACKAGE,
        "-c",
        str(dump.parent / "pytest.ini"),
        "--rootdir",
        str(suite or dump.parent),
        "--inventory",
        str(request.inventory.resolve()),
        "--inventory-dump",
        str(dump),
        "--results-json",
        str(reports / RESULTS),
        "--junitxml",
        str(reports / JUNIT),
        "-o",
        "junit_suite_name=iotfleet-compliance",
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        "--color=no",
        # Its own temp root: pytest never prunes the caller's (or another run's) temp dirs.
        "--basetemp",
        str(dump.parent / "pytest"),
    ]
    if workers > 1:
        # The suite's scheduler keeps each broker's checks on one worker.
        argv += ["-n", str(workers)]
    if request.markexpr:
        argv += ["-m", request.markexpr]
    if request.keyword:
        argv += ["-k", request.keyword]
    for host in request.limit:
        argv += ["--limit", host]
    if request.probe_device:
        argv += ["--probe-device", request.probe_device]
    if request.cert_margin_days is not None:
        argv += ["--cert-margin-days", str(request.cert_margin_days)]
    if request.crl_margin_hours is not None:
        argv += ["--crl-margin-hours", str(request.crl_margin_hours)]
    return argv


def _error(console: Console, message: str) -> int:
    console.print(f"[bold red]iotfleet check:[/] {message}", highlight=False, markup=True)
    return EXIT_USAGE


def run_check(request: CheckRequest, console: Console) -> int:
    """Run the suite, print the summary, return the exit code."""
    if suite_dir() is None:
        return _error(
            console, f"the compliance suite needs iotfleet's [check] extra: {CHECK_EXTRA}"
        )
    try:
        hosts = read_inventory(request.inventory)
        plan = plan_from_hosts(hosts, request.limit)
    except (PlanError, InventoryError) as exc:
        return _error(console, str(exc))
    try:
        # Read-only: the check creates no secret; the rollout makes them.
        ctx = FleetContext.for_fleet(plan.fleet, read_only=True)
    except (InventoryError, SecretError) as exc:
        return _error(
            console,
            f"fleet {plan.fleet.name} has no PKI yet: run a rollout first (pyinfra "
            f"{request.inventory} deploy.py). {exc}",
        )
    try:
        # The checks compare with the fleet's PKI and use its canaries: it must exist.
        ctx.pki.ca_chain_pem()
        choose_cast(plan.fleet, ctx.pki, set(ctx.passwords), request.probe_device)
    except LookupError as exc:
        return _error(console, str(exc))
    except PkiError as exc:
        return _error(
            console,
            f"fleet {plan.fleet.name} has no PKI yet: run a rollout first (pyinfra "
            f"{request.inventory} deploy.py). {exc}",
        )
    log = request.reports / LOG
    try:
        request.reports.mkdir(parents=True, exist_ok=True)
        for name in (RESULTS, JUNIT, HTML):
            (request.reports / name).unlink(missing_ok=True)
        out = log.open("w")
    except OSError as exc:
        where = exc.filename or request.reports
        return _error(console, f"cannot write {where}: {exc.strerror}; no check was run")
    workers = worker_count(plan, request.parallel)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iotfleet-check-") as private:
        dump = Path(private) / "inventory.json"
        (dump.parent / "pytest.ini").write_text(PYTEST_INI)
        dump.touch(mode=0o600)
        dump.write_text(
            json.dumps([{"name": h.name, "groups": h.groups, "data": h.data} for h in hosts])
        )
        with out:
            what = f"Checking {len(plan.brokers)} broker(s) with {workers} worker(s)"
            with console.status(what):
                result = subprocess.run(
                    pytest_argv(request, workers, dump),
                    # Relative paths of the inventory (ssh_key...) mean what they meant to
                    # the user, as in their pyinfra runs.
                    cwd=Path.cwd(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                    check=False,
                )
    code = PYTEST_EXIT.get(result.returncode, EXIT_USAGE)
    results_file = request.reports / RESULTS
    if code == EXIT_USAGE or not results_file.is_file():
        output = log.read_text() if log.is_file() else ""
        tail = [line for line in output.splitlines() if line.strip()][-15:]
        console.print("\n".join(tail), highlight=False, markup=False)
        if result.returncode == 5:
            return _error(console, "no check matched the selection (-m/-k/--limit)")
        return _error(
            console, f"the suite did not run (pytest exit {result.returncode}); see {log}"
        )
    run = RunResults.load(results_file)
    run.inventory = str(request.inventory)
    run.duration = time.monotonic() - started
    run.save(results_file)
    try:
        report: Path | None = publish(run, request)
    except (OSError, ValueError, jinja2.TemplateError) as exc:
        # The verdict is printed whatever happens to the page; the run still fails.
        problem = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        report = None
    written = [p for p in (report, results_file, request.reports / JUNIT, log) if p]
    render_summary(run, console, reports=written)
    if report is None:
        _error(console, f"the report or the metrics could not be written: {problem}")
        return max(code, EXIT_FAILED)
    if request.prometheus:
        console.print(f"Metrics: {request.prometheus}", highlight=False, markup=False)
    return code


def publish(run: RunResults, request: CheckRequest) -> Path:
    """Add the run to the history (dropping runs older than the kept days), make the page
    from that history, write the Prometheus textfile. Returns the page's path."""
    store = request.history_dir
    run_history.append(store, run)
    run_history.prune(store, run.fleet, request.history_days, run.started)
    runs = run_history.load(store, run.fleet) or [run]
    html = request.reports / HTML
    links = [request.reports / name for name in (RESULTS, JUNIT, LOG)]
    write_file_atomically(html, page.render(runs, links).encode(), mode=0o644)
    if request.prometheus:
        write_textfile(request.prometheus, run)
    return html
