"""Results of a compliance run: one record per check and target, saved as JSON, summarised.

The pytest plugin of ``tests/compliance`` writes ``results.json`` (with ``--results-json``);
``iotfleet check`` reads it back for the summary and the exit code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

NOT_APPLICABLE = "not applicable"
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
FAILING = (FAILED, ERROR)


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


@dataclass
class RunResults:
    inventory: str
    results: list[CheckResult] = field(default_factory=list)
    facts: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> {name: value}
    duration: float = 0.0

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome in FAILING]

    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for result in self.results:
            seen.setdefault(result.host, None)
        return sorted(seen)

    def save(self, path: Path) -> None:
        data = {
            "inventory": self.inventory,
            "duration": round(self.duration, 3),
            "facts": self.facts,
            "results": [asdict(r) for r in self.results],
        }
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunResults:
        data = json.loads(path.read_text())
        results = [
            CheckResult(**{**r, "groups": tuple(r.get("groups", ()))}) for r in data["results"]
        ]
        return cls(data["inventory"], results, data.get("facts", {}), data.get("duration", 0.0))


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
