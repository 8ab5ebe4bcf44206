"""The HTML report of a fleet's compliance: the latest run first, then what changed since the
run before it, days left of certificates and CRLs, and trends over the history.

One self-contained file (inline CSS and SVG, no script, no font or file from elsewhere): it
reads offline, from a mail attachment or a CI artefact.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from markupsafe import Markup

from iotfleet import __version__
from iotfleet.check.results import (
    CA,
    CERTIFICATE,
    CRL,
    FAILING,
    NOT_APPLICABLE,
    SKIPPED,
    CheckResult,
    RunResults,
)
from iotfleet.report.charts import BAD, GOOD, Point, Series, color, line_chart
from iotfleet.report.history import Changes, changes

MAX_X_TICKS = 8
SOONEST_IDENTITIES = 10  # PKI identities listed on the page


@dataclass(frozen=True)
class BrokerRow:
    host: str
    failed: int
    total: int
    passed: int
    not_applicable: int
    mosquitto: str
    new: bool  # not in the previous run

    @property
    def state(self) -> str:
        return "failed" if self.failed else "passed"


@dataclass(frozen=True)
class FailedCheck:
    result: CheckResult
    where: str  # the target in the broker's terms (":8883", "/etc/mosquitto/certs/server.key")
    command: str  # the command that shows this failure again
    new: bool  # it did not fail in the previous run
    same: tuple[CheckResult, ...] = ()  # further checks of the broker that failed just so


SAME_FAILURE = 3  # this many checks of one broker failing with one message share one card


def when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def where(result: CheckResult) -> str:
    target = result.target
    if target == result.host:
        return "the broker"
    if target.startswith(result.host + ":"):
        rest = target[len(result.host) + 1 :]
        return f"port {rest}" if rest.split("-")[0].isdigit() else rest
    return target


def check_command(run: RunResults, result: CheckResult) -> str:
    """``iotfleet check`` limited to this broker and this very check."""
    return shlex.join(
        ["iotfleet", "check", run.inventory, "--limit", result.host, "-k", result.key]
    )


def _x_ticks(runs: Sequence[RunResults]) -> list[tuple[float, str]]:
    every = max(1, -(-len(runs) // MAX_X_TICKS))
    return [(float(i), f"{r.started:%m-%d %H:%M}") for i, r in enumerate(runs)][::every]


Chart = tuple[str, Markup, list[tuple[str, str]]]  # caption, SVG, legend (name, colour)


def checks_chart(runs: Sequence[RunResults]) -> Chart:
    passed, failed = [], []
    for i, run in enumerate(runs):
        counts = run.counts()
        bad = sum(counts[o] for o in FAILING)
        passed.append(Point(i, counts["passed"], f"{when(run.started)}: {counts['passed']} passed"))
        failed.append(Point(i, bad, f"{when(run.started)}: {bad} failed"))
    title = "Checks passed and failed per run"
    chart = line_chart(
        "chart-checks",
        title,
        [Series("passed", passed, GOOD), Series("failed", failed, BAD, values=True)],
        _x_ticks(runs),
        "checks",
    )
    return title, chart, [("passed", GOOD), ("failed", BAD)]


def _brokers(runs: Sequence[RunResults]) -> list[str]:
    return sorted({host for run in runs for host in run.hosts()})


def days_left_chart(
    chart_id: str, title: str, runs: Sequence[RunResults], kinds: tuple[str, ...], margin: float
) -> Chart:
    series = []
    for n, host in enumerate(_brokers(runs)):
        points = []
        for i, run in enumerate(runs):
            closest = run.closest(host, *kinds)
            if closest is not None:
                days = closest.days_left(run.started)
                points.append(
                    Point(i, round(days, 2), f"{host}, {when(run.started)}: {closest.name} "
                          f"{days:.1f} days left")
                )  # fmt: skip
        if points:
            series.append(Series(host, points, color(n)))
    chart = line_chart(
        chart_id, title, series, _x_ticks(runs), "days left", (margin, f"margin {margin:g} d")
    )
    return title, chart, [(s.name, s.color) for s in series]


def runs_chart(runs: Sequence[RunResults]) -> Chart:
    good: list[Point] = []
    bad: list[Point] = []
    for run in runs:
        verdict = "failed" if run.failed else "passed"
        point = Point(
            run.started.timestamp(), round(run.duration, 1),
            f"{when(run.started)}: {verdict}, {run.duration:.1f} s, {len(run.results)} checks",
        )  # fmt: skip
        (bad if run.failed else good).append(point)
    span = [r.started for r in runs]
    ticks = [(m.timestamp(), f"{m:%m-%d %H:%M}") for m in sorted({span[0], span[-1]})]
    title = "Runs over time, seconds each"
    chart = line_chart(
        "chart-runs",
        title,
        [Series("passed", good, GOOD, line=False), Series("failed", bad, BAD, line=False)],
        ticks,
        "seconds",
    )
    return title, chart, [("every check passed", GOOD), ("something failed", BAD)]


def _failed_cards(
    run: RunResults, results: Sequence[CheckResult], new_keys: set[tuple[str, str]]
) -> list[FailedCheck]:
    """One card per failed check; checks failing with the very same message (a broker that
    cannot be reached) share one card, shown again by checking that broker."""
    by_message: dict[str, list[CheckResult]] = {}
    for result in results:
        if result.outcome in FAILING:
            by_message.setdefault(result.message or result.outcome, []).append(result)
    cards = []
    for group in by_message.values():
        first = group[0]
        new = any((r.host, r.key) in new_keys for r in group)
        if len(group) >= SAME_FAILURE:
            command = shlex.join(["iotfleet", "check", run.inventory, "--limit", first.host])
            cards.append(FailedCheck(first, "", command, new, tuple(group[1:])))
        else:
            cards += [
                FailedCheck(r, where(r), check_command(run, r), (r.host, r.key) in new_keys)
                for r in group
            ]
    return cards


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("iotfleet.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(runs: Sequence[RunResults], links: Sequence[Path] = ()) -> str:
    """The page for the last of ``runs`` (oldest first), with the others as its history.
    ``links`` are files beside the page (junit.xml, pytest.log) it links to."""
    if not runs:
        raise ValueError("no run to report")
    current = runs[-1]
    previous = runs[-2] if len(runs) > 1 else None
    diff: Changes = changes(previous, current)
    new_keys = {(r.host, r.key) for r in diff.new_failures}
    brokers = []
    for host in current.hosts():
        counts = current.counts(host)
        brokers.append(
            BrokerRow(
                host=host,
                failed=sum(counts[o] for o in FAILING),
                total=sum(counts.values()),
                passed=counts["passed"],
                not_applicable=counts[NOT_APPLICABLE] + counts[SKIPPED],
                mosquitto=current.facts.get(host, {}).get("mosquitto_version", ""),
                new=host in diff.new_brokers,
            )
        )
    brokers.sort(key=lambda b: (not b.failed, b.host))
    failures = {
        b.host: _failed_cards(current, current.host_results(b.host), new_keys)
        for b in brokers
        if b.failed
    }
    cert_days = float(current.margins.get("cert_days", 14))
    crl_days = float(current.margins.get("crl_hours", 24)) / 24
    expiries = sorted(current.expiries, key=lambda e: e.at)
    versions = sorted({b.mosquitto for b in brokers if b.mosquitto})
    selection = {k: v for k, v in current.selection.items() if v}
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            run=current,
            when=when,
            version=current.iotfleet_version or __version__,
            mosquitto_versions=versions,
            brokers=brokers,
            failures=failures,
            changes=diff,
            where=where,
            counts=current.counts(),
            failed_total=len(current.failed),
            selection=selection,
            expiries=expiries,
            margin_for={CERTIFICATE: cert_days, CA: cert_days, CRL: crl_days},
            identities=sorted(current.identities, key=lambda i: i.at)[:SOONEST_IDENTITIES],
            identity_states={
                state: current.identity_counts().get(state, 0)
                for state in ("renew", "expired", "stale")
            },
            identity_count=sum(current.identity_counts().values()),
            not_applicable=[r for r in current.results if r.outcome in (NOT_APPLICABLE, SKIPPED)],
            runs=runs,
            charts=[
                checks_chart(runs),
                days_left_chart(
                    "chart-cert-days",
                    "Certificate closest to expiry on each broker (days left)",
                    runs,
                    (CERTIFICATE, CA),
                    cert_days,
                ),
                days_left_chart(
                    "chart-crl-days",
                    "CRL nextUpdate on each broker (days left)",
                    runs,
                    (CRL,),
                    crl_days,
                ),
                runs_chart(runs),
            ],
            links=[p.name for p in links],
        )
    )
