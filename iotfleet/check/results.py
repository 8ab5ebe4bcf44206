"""Results of a compliance run: one record per check and target, saved as JSON, summarised.

The pytest plugin of ``tests/compliance`` writes ``results.json`` (with ``--results-json``);
``iotfleet check`` completes it (inventory, whole duration) and reads it back for the
summary, the exit code, the history, the HTML report and the Prometheus textfile. The file's
schema is documented in docs/compliance.md ("results.json").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from iotfleet.fs.atomic import write_file_atomically

SCHEMA = 2  # results.json format version (1: no fleet, time, expiries)
NOT_APPLICABLE = "not applicable"
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
FAILING = (FAILED, ERROR)
CERTIFICATE, CA, CRL = "certificate", "ca", "crl"  # kinds of Expiry


@dataclass(frozen=True)
class CheckResult:
    host: str
    check: str  # human title ("Anonymous clients are refused")
    target: str  # what was checked: host, host:port, host:/path ...
    outcome: str  # passed, failed, error, not applicable, skipped
    message: str = ""  # the problems (failed), why (not applicable), the exception (error)
    groups: tuple[str, ...] = ()  # markers: host, files, mqtt ...
    test: str = ""  # pytest node id
    duration: float = 0.0

    @property
    def function(self) -> str:
        """The check's test function (``test_owner_and_mode``): stable across runs."""
        return self.test.split("::")[-1].split("[")[0] if self.test else self.check

    @property
    def key(self) -> str:
        """Identifies this check on this target from one run to the next."""
        return self.test.split("::")[-1] if self.test else f"{self.check}@{self.target}"


@dataclass(frozen=True)
class Expiry:
    """A date a broker depends on, as seen on the broker: a certificate's notAfter, the CRL's
    nextUpdate."""

    host: str
    kind: str  # certificate (the broker's own), ca, crl
    name: str  # "broker certificate", "CA 'CN=...'", "CRL"
    at: datetime  # notAfter / nextUpdate (UTC)

    def seconds_left(self, now: datetime) -> float:
        return (self.at - now).total_seconds()

    def days_left(self, now: datetime) -> float:
        return self.seconds_left(now) / 86400


@dataclass(frozen=True)
class Identity:
    """A certificate or CRL of the fleet PKI on the control machine (``iotfleet pki status``):
    every valid device, client and broker identity, the CAs and the CRLs."""

    kind: str  # device, client, broker, root-ca, intermediate-ca, crl, root-crl
    name: str
    at: datetime  # notAfter / nextUpdate (UTC)
    state: str  # ok, renew (inside its renewal window), expired, stale

    def seconds_left(self, now: datetime) -> float:
        return (self.at - now).total_seconds()

    def days_left(self, now: datetime) -> float:
        return self.seconds_left(now) / 86400


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class RunResults:
    inventory: str
    results: list[CheckResult] = field(default_factory=list)
    facts: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> {name: value}
    duration: float = 0.0
    fleet: str = ""
    started: datetime = field(default_factory=utc_now)
    expiries: list[Expiry] = field(default_factory=list)
    iotfleet_version: str = ""
    # What was asked: markexpr, keyword, limit (a partial run is not a whole-fleet verdict).
    selection: dict[str, Any] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)  # cert_days, crl_hours
    identities: list[Identity] = field(default_factory=list)  # the PKI's, soonest first
    # state -> count over all the PKI's identities, as loaded (a history entry keeps only the
    # soonest identities); identity_counts() gives it for a run made here
    identity_states: dict[str, int] = field(default_factory=dict)

    def identity_counts(self) -> dict[str, int]:
        """State -> number of the PKI's identities (all, also when only the soonest are kept)."""
        if self.identity_states:
            return dict(self.identity_states)
        counts: dict[str, int] = {}
        for identity in self.identities:
            counts[identity.state] = counts.get(identity.state, 0) + 1
        return counts

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome in FAILING]

    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for result in self.results:
            seen.setdefault(result.host, None)
        return sorted(seen)

    def host_results(self, host: str) -> list[CheckResult]:
        return [r for r in self.results if r.host == host]

    def failing_hosts(self) -> list[str]:
        return [h for h in self.hosts() if any(r.outcome in FAILING for r in self.host_results(h))]

    def counts(self, host: str | None = None) -> dict[str, int]:
        """Outcome -> number of checks (of one host, or all)."""
        mine = self.results if host is None else self.host_results(host)
        counts = {PASSED: 0, FAILED: 0, ERROR: 0, NOT_APPLICABLE: 0, SKIPPED: 0}
        for result in mine:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        return counts

    def closest(self, host: str, *kinds: str) -> Expiry | None:
        """The host's expiry of these kinds that comes first."""
        mine = [e for e in self.expiries if e.host == host and e.kind in kinds]
        return min(mine, key=lambda e: e.at) if mine else None

    def to_json(self) -> dict[str, Any]:
        brokers = {}
        for host in self.hosts():
            counts = self.counts(host)
            brokers[host] = {
                "state": "failed" if counts[FAILED] + counts[ERROR] else "passed",
                "mosquitto_version": self.facts.get(host, {}).get("mosquitto_version"),
                "checks": counts,
            }
        return {
            "schema": SCHEMA,
            "fleet": self.fleet,
            "inventory": self.inventory,
            "started": _iso(self.started),
            "duration": round(self.duration, 3),
            "iotfleet_version": self.iotfleet_version,
            "selection": self.selection,
            "margins": self.margins,
            "passed": not self.failed and bool(self.results),
            "checks": self.counts(),
            "brokers": brokers,
            "facts": self.facts,
            "expiries": [
                {
                    "host": e.host,
                    "kind": e.kind,
                    "name": e.name,
                    "at": _iso(e.at),
                    "days_left": round(e.days_left(self.started), 3),
                }
                for e in self.expiries
            ],
            "identity_states": self.identity_counts(),
            "identities": [
                {
                    "kind": i.kind,
                    "name": i.name,
                    "at": _iso(i.at),
                    "days_left": round(i.days_left(self.started), 3),
                    "state": i.state,
                }
                for i in sorted(self.identities, key=lambda i: i.at)
            ],
            "results": [asdict(r) for r in self.results],
        }

    def save(self, path: Path) -> None:
        data = json.dumps(self.to_json(), indent=1) + "\n"
        # Readable like the other reports (they hold no secret): the web server or
        # node_exporter of an operator may serve them.
        write_file_atomically(path, data.encode(), mode=0o644)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        results = [
            CheckResult(**{**r, "groups": tuple(r.get("groups", ()))}) for r in data["results"]
        ]
        return cls(
            inventory=data["inventory"],
            results=results,
            facts=data.get("facts", {}),
            duration=data.get("duration", 0.0),
            fleet=data.get("fleet", ""),
            started=_parse_time(data["started"]) if data.get("started") else utc_now(),
            expiries=[
                Expiry(e["host"], e["kind"], e["name"], _parse_time(e["at"]))
                for e in data.get("expiries", [])
            ],
            iotfleet_version=data.get("iotfleet_version", ""),
            selection=data.get("selection", {}),
            margins=data.get("margins", {}),
            identities=[
                Identity(i["kind"], i["name"], _parse_time(i["at"]), i["state"])
                for i in data.get("identities", [])
            ],
            identity_states=data.get("identity_states", {}),
        )

    @classmethod
    def load(cls, path: Path) -> RunResults:
        return cls.from_json(json.loads(path.read_text()))


def _count(results: Iterable[CheckResult], *outcomes: str) -> int:
    return sum(1 for r in results if r.outcome in outcomes)


def render_summary(
    run: RunResults, console: Console, reports: Sequence[Path] = (), title: str | None = None
) -> None:
    """The summary people read: per host, every failed check with its problems (one per
    line, never wrapped by us: logs and mails stay greppable), then what did not apply."""
    results = run.results
    total = len(results)
    failed = _count(results, *FAILING)
    verdict = "[bold red]FAIL[/]" if failed else "[bold green]PASS[/]"
    console.print(
        f"{verdict} {escape(title or f'compliance of {run.inventory}')}: "
        f"{len(run.hosts())} broker(s), {total} checks, {_count(results, PASSED)} passed, "
        f"{failed} failed, {_count(results, NOT_APPLICABLE)} not applicable"
        + (f", {_count(results, SKIPPED)} skipped" if _count(results, SKIPPED) else "")
        + (f" ({run.duration:.1f} s)" if run.duration else ""),
        soft_wrap=True,
    )
    for host in run.hosts():
        mine = [r for r in results if r.host == host]
        bad = [r for r in mine if r.outcome in FAILING]
        version = run.facts.get(host, {}).get("mosquitto_version")
        about = f" (Mosquitto {escape(version)})" if version else ""
        if bad:
            console.print(
                f"\n[red]✗[/] [bold]{escape(host)}[/]{about}: {len(bad)} of {len(mine)} "
                "checks failed",
                soft_wrap=True,
            )
            for check, target, message in _rows(bad, host):
                where = f" [dim]({escape(target)})[/]" if target else ""
                console.print(f"  [red]✗[/] {escape(check)}{where}", soft_wrap=True)
                for line in message.splitlines():
                    console.print(f"      {escape(line)}", soft_wrap=True, highlight=False)
        else:
            console.print(
                f"\n[green]✓[/] [bold]{escape(host)}[/]{about}: all "
                f"{_count(mine, PASSED)} applicable checks passed",
                soft_wrap=True,
            )
        for result in mine:
            if result.outcome in (NOT_APPLICABLE, SKIPPED):
                console.print(
                    f"  [dim]{result.outcome}: {escape(result.check)} "
                    f"({escape(_short_target(result.target, host))}): "
                    f"{escape(result.message)}[/]",
                    soft_wrap=True,
                )
    if reports:
        console.print("\nReports: " + ", ".join(escape(str(p)) for p in reports), soft_wrap=True)


def _rows(failed: list[CheckResult], host: str) -> list[tuple[str, str, str]]:
    """One row per failed check; checks that failed with the very same message (a host that
    cannot be reached) share one row."""
    by_message: dict[str, list[CheckResult]] = {}
    for result in failed:
        by_message.setdefault(result.message or result.outcome, []).append(result)
    rows = []
    for message, results in by_message.items():
        if len(results) > 2:
            rows.append((f"{len(results)} checks ({results[0].check}, ...)", "", message))
        else:
            rows += [(r.check, _short_target(r.target, host), message) for r in results]
    return rows


def _short_target(target: str, host: str) -> str:
    """``host:8883`` -> ``:8883`` inside that host's table (the host is the heading)."""
    return target[len(host) :] or "host" if target.startswith(host) else target


def exit_code(run: RunResults) -> int:
    """1 if anything failed (or nothing ran), else 0."""
    if not run.results:
        return 1
    return 1 if run.failed else 0
