"""Hooks and fixtures of a compliance run (registered by ``plugin.py`` when a fleet is checked).

* ``--inventory`` names the pyinfra inventory the rollout uses; every check is parametrized
  per broker (and per listener or file), so test ids name the host and the listener;
* with ``-n N`` (pytest-xdist) every check of one broker runs in the same worker, over one
  SSH connection; brokers are checked in parallel (``pytest_xdist_make_scheduler`` below);
* results go to ``--results-json`` (schema in docs/compliance.md) and a summary grouped by
  host ends the terminal output; ``--junitxml`` works as in any pytest run (CI systems);
* a check that does not apply to a broker (e.g. no password listener) is reported as
  "not applicable", never silently dropped.

``iotfleet check`` runs this suite with reports and parallelism set up (iotfleet/check/runner.py).
As a plugin of the whole pytest session these hooks would reach every test: ``plugin.py``
registers this module only for a run against a fleet, so other test suites never see them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from iotfleet import __version__
from iotfleet.check.pki_identities import pki_identities
from iotfleet.check.plan import PlanError, plan_from_hosts, read_inventory
from iotfleet.check.results import (
    ERROR,
    FAILED,
    NOT_APPLICABLE,
    PASSED,
    SKIPPED,
    CheckResult,
    Expiry,
    RunResults,
    render_summary,
    utc_now,
)
from iotfleet.check.suite import Param, Suite, host_of_test, runs_last
from iotfleet.compliance.plugin import MARKERS
from iotfleet.model import InventoryError, RawHost
from iotfleet.pki import PkiError

_HOSTS_KEY = pytest.StashKey[str]()
_SUITE_KEY = pytest.StashKey[Suite]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _option(config: pytest.Config, name: str) -> Any:
    """One of the suite's options (``plugin.py``)."""
    try:
        return config.getoption(name)
    except ValueError:
        return None


def _load_hosts(config: pytest.Config) -> str:
    """The inventory's hosts as JSON: from the controller (xdist worker), a dump made by
    ``iotfleet check``, or loaded now."""
    if _is_worker(config):
        return str(config.workerinput["iotfleet_hosts"])  # type: ignore[attr-defined]
    dump = _option(config, "inventory_dump")
    if dump:
        return Path(dump).read_text()
    inventory = _option(config, "inventory")
    if not inventory:
        raise pytest.UsageError(
            "the compliance suite needs --inventory INVENTORY (the fleet's pyinfra inventory)"
        )
    try:
        hosts = read_inventory(inventory)
    except PlanError as exc:
        raise pytest.UsageError(str(exc)) from None
    return json.dumps([{"name": h.name, "groups": h.groups, "data": h.data} for h in hosts])


def pytest_configure(config: pytest.Config) -> None:
    """Load the fleet and plan the checks (once; xdist workers get the controller's hosts)."""
    hosts_json = _load_hosts(config)
    hosts = [RawHost(h["name"], tuple(h["groups"]), h["data"]) for h in json.loads(hosts_json)]
    try:
        plan = plan_from_hosts(hosts, _option(config, "limit") or ())
        suite = Suite(
            plan,
            probe_device=_option(config, "probe_device"),
            **{
                key: value
                for key, value in (
                    ("cert_margin_days", _option(config, "cert_margin_days")),
                    ("crl_margin_hours", _option(config, "crl_margin_hours")),
                )
                if value is not None
            },
        )
    except (InventoryError, PlanError, LookupError, PkiError) as exc:
        raise pytest.UsageError(f"inventory {_option(config, 'inventory')}: {exc}") from None
    config.stash[_HOSTS_KEY] = hosts_json
    config.stash[_SUITE_KEY] = suite
    if not _is_worker(config):
        config.pluginmanager.register(_Collector(config), "iotfleet-compliance-results")


def pytest_unconfigure(config: pytest.Config) -> None:
    suite = config.stash.get(_SUITE_KEY, None)
    if suite is not None:
        suite.close()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: workers get the inventory the controller loaded (loaded once per run)."""
    node.workerinput["iotfleet_hosts"] = node.config.stash[_HOSTS_KEY]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist: all checks of one broker go to one worker (one SSH connection per broker, and
    never two sessions of one MQTT identity on one broker at once); brokers run in parallel.

    (xdist's own ``--dist loadgroup`` with ``xdist_group`` marks would do the same, but its
    grouping does not take effect with pytest 9: xdist 3.8 renames ``item._nodeid``, which
    pytest 9 no longer reads. So this scheduler groups by the host in each test id.)
    """
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    hosts = [broker.name for broker in _suite(config).plan.brokers]

    class ByBroker(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return host_of_test(nodeid, hosts)

    return ByBroker(config, log)


def _suite(config: pytest.Config) -> Suite:
    try:
        return config.stash[_SUITE_KEY]
    except KeyError:
        raise pytest.UsageError("the compliance suite needs --inventory INVENTORY") from None


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> Suite:
    return _suite(request.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    suite = _suite(metafunc.config)
    if "broker" in metafunc.fixturenames:
        params = suite.broker_params()
        name = "broker"
    elif "listener" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("listener_kind")
        params = suite.listener_params(marker.args[0] if marker else "all")
        name = "listener"
    elif "expected_file" in metafunc.fixturenames:
        params = suite.file_params()
        name = "expected_file"
    else:
        return
    metafunc.parametrize(
        name,
        [pytest.param(p, id=p.id) for p in params],
    )


def _param_of(item: pytest.Item) -> Param | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    return next((v for v in callspec.params.values() if isinstance(v, Param)), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each check names its host, target, title and groups (JUnit properties, results).

    Flood checks move to the end (stable order otherwise): every check of a broker runs in
    one worker in collection order, so they run after all the others of their broker.
    """
    items[:] = sorted(items, key=runs_last)
    for item in items:
        param = _param_of(item)
        if param is None:
            continue
        function = getattr(item, "function", None)
        doc = (function.__doc__ or "").strip().splitlines() if function else []
        title = doc[0].rstrip(".") if doc else item.name.split("[")[0]
        groups = sorted(
            {m.name for m in item.iter_markers()}
            & {k.split("(")[0] for k in MARKERS} - {"listener_kind"}
        )
        item.user_properties.extend(
            [
                ("host", param.host),
                ("target", param.target),
                ("check", title),
                ("groups", ",".join(groups)),
            ]
        )


@pytest.fixture(autouse=True)
def _not_applicable(request: pytest.FixtureRequest) -> None:
    param = _param_of(request.node)
    if param is not None and param.not_applicable:
        pytest.skip(f"{NOT_APPLICABLE}: {param.not_applicable}")


@pytest.fixture
def record_fact(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``record_fact(name, value)``: a per-host fact for the summary (e.g. Mosquitto's
    version); kept as a JUnit property too."""

    def record(name: str, value: str) -> None:
        request.node.user_properties.append((f"fact:{name}", value))

    yield record


@pytest.fixture
def record_expiry(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``record_expiry(kind, name, moment)``: a date the broker depends on (a certificate's
    notAfter, the CRL's nextUpdate) for the days-left table, trends and metrics."""

    def record(kind: str, name: str, moment: datetime) -> None:
        request.node.user_properties.append((f"expiry:{kind}:{name}", moment.isoformat()))

    yield record


# -- results and summary (controller side) -----------------------------------------------------


def _message(report: pytest.TestReport) -> str:
    """What went wrong, in the check's own words: the problems a check failed with, or the
    error that stopped it (never the traceback; that stays in pytest.log and the HTML)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None:
        return report.longreprtext.strip().removeprefix("Failed: ")
    message = str(crash.message)
    if message.startswith("Failed: "):
        return message.removeprefix("Failed: ")
    return _without_exception_name(message)


def _without_exception_name(message: str) -> str:
    """``HostCommandError: cannot reach ...`` -> ``cannot reach ...`` (our own errors speak)."""
    name, sep, rest = message.partition(": ")
    return rest if sep and name.rsplit(".", 1)[-1] == "HostCommandError" else message


class _Collector:
    """Controller-side plugin: one ``CheckResult`` per test, saved and summarised at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, CheckResult] = {}
        self.facts: dict[str, dict[str, str]] = {}
        self.expiries: dict[tuple[str, str, str], Expiry] = {}
        self.started = utc_now()
        self.start = time.monotonic()
        self.identities = pki_identities(_suite(config).ctx.pki_settings, self.started)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = {k: str(v) for k, v in report.user_properties}
        if "host" not in props:
            return
        for key, value in props.items():
            if key.startswith("fact:"):
                self.facts.setdefault(props["host"], {})[key[5:]] = value
            elif key.startswith("expiry:"):
                _, kind, name = key.split(":", 2)
                moment = datetime.fromisoformat(value)
                self.expiries[(props["host"], kind, name)] = Expiry(
                    props["host"], kind, name, moment
                )
        previous = self.results.get(report.nodeid)
        if report.when == "call" or (report.outcome != "passed" and previous is None):
            self.results[report.nodeid] = _result(report, props)
        elif report.when == "teardown" and report.failed and previous is not None:
            self.results[report.nodeid] = CheckResult(
                **{**previous.__dict__, "outcome": ERROR, "message": _message(report)}
            )

    def run_results(self) -> RunResults:
        suite = _suite(self.config)
        option = self.config.option
        return RunResults(
            inventory=str(self.config.getoption("inventory") or "?"),
            results=list(self.results.values()),
            facts=self.facts,
            duration=time.monotonic() - self.start,
            fleet=suite.plan.fleet.name,
            started=self.started,
            expiries=list(self.expiries.values()),
            iotfleet_version=__version__,
            selection={
                "markexpr": option.markexpr or None,
                "keyword": option.keyword or None,
                "limit": list(_option(self.config, "limit") or []),
            },
            margins={"cert_days": suite.cert_margin_days, "crl_hours": suite.crl_margin_hours},
            identities=self.identities,
        )

    def pytest_sessionfinish(self) -> None:
        path = self.config.getoption("results_json")
        if path:
            self.run_results().save(Path(path))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = self.run_results()
        if run.results:
            terminalreporter.section("iotfleet compliance summary")
            console = Console(file=terminalreporter._tw._file, highlight=False, width=140)
            render_summary(run, console)


def _result(report: pytest.TestReport, props: dict[str, str]) -> CheckResult:
    message = _message(report)
    if report.skipped:
        outcome = NOT_APPLICABLE if message.startswith(NOT_APPLICABLE) else SKIPPED
        message = message.removeprefix(f"{NOT_APPLICABLE}: ")
    elif report.failed:
        outcome = FAILED if report.when == "call" else ERROR
    else:
        outcome, message = PASSED, ""
    return CheckResult(
        host=props["host"],
        check=props.get("check", report.nodeid),
        target=props.get("target", props["host"]),
        outcome=outcome,
        message=message,
        groups=tuple(g for g in props.get("groups", "").split(",") if g),
        test=report.nodeid,
        duration=round(report.duration, 3),
    )
