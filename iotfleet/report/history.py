"""The history of compliance runs: one JSON file per run (a copy of its results.json) under
``<history>/<fleet>/``, kept for a number of days, and what changed from one run to the next.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from iotfleet.check.results import FAILING, PASSED, CheckResult, RunResults
from iotfleet.fs.atomic import write_file_atomically

KEEP_DAYS = 60  # default of `--history-days`
KEEP_IDENTITIES = 20  # the soonest PKI identities a history entry keeps (a fleet may have 10,000)
HISTORY = "history"  # under the reports directory, unless --history says otherwise
_STAMP = "%Y%m%dT%H%M%SZ"


def default_history(reports: Path) -> Path:
    return reports / HISTORY


def _fleet_dir(history: Path, fleet: str) -> Path:
    # Fleet names are inventory values: keep them from walking out of the directory.
    return history / (re.sub(r"[^A-Za-z0-9._-]", "_", fleet or "unnamed").lstrip(".") or "_")


def append(history: Path, run: RunResults) -> Path:
    """Add ``run`` to the history; returns its file. Never overwrites an earlier run."""
    directory = _fleet_dir(history, run.fleet)
    entry = run.to_json()
    entry["identities"] = entry["identities"][:KEEP_IDENTITIES]
    data = (json.dumps(entry, indent=1) + "\n").encode()
    stamp = run.started.strftime(_STAMP)
    for n in range(1000):
        path = directory / (f"{stamp}.json" if n == 0 else f"{stamp}-{n}.json")
        if write_file_atomically(path, data, mode=0o644, overwrite=False):
            return path
    raise FileExistsError(f"too many runs at {stamp} in {directory}")


def prune(history: Path, fleet: str, keep_days: float, now: datetime) -> list[Path]:
    """Remove the fleet's runs that started more than ``keep_days`` before ``now``."""
    removed = []
    limit = now - timedelta(days=keep_days)
    for path, run in _entries(_fleet_dir(history, fleet)):
        if run.started < limit:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def fleets(history: Path) -> list[str]:
    """Fleets with runs in the history, the most recently checked first."""
    newest: dict[str, datetime] = {}
    if history.is_dir():
        for directory in history.iterdir():
            runs = [run for _, run in _entries(directory)]
            if runs:
                newest[runs[-1].fleet or directory.name] = runs[-1].started
    return sorted(newest, key=lambda name: newest[name], reverse=True)


def load(history: Path, fleet: str) -> list[RunResults]:
    """The fleet's runs, oldest first."""
    return [run for _, run in _entries(_fleet_dir(history, fleet))]


def _entries(directory: Path) -> list[tuple[Path, RunResults]]:
    entries = []
    if directory.is_dir():
        for path in directory.glob("*.json"):
            try:
                entries.append((path, RunResults.load(path)))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a run of ours (written atomically, so never half of one)
    return sorted(entries, key=lambda entry: (entry[1].started, entry[0].name))


@dataclass(frozen=True)
class Changes:
    """What changed from the previous run of the fleet to this one."""

    previous: RunResults | None
    new_failures: list[CheckResult]  # failing now; passed, did not apply or did not run before
    fixed: list[CheckResult]  # passed now, failed before (this run's results)
    new_brokers: list[str]
    gone_brokers: list[str]  # checked before, not now (removed, or left out by --limit)

    @property
    def any(self) -> bool:
        return bool(self.new_failures or self.fixed or self.new_brokers or self.gone_brokers)


def changes(previous: RunResults | None, current: RunResults) -> Changes:
    if previous is None:
        return Changes(None, [], [], [], [])
    before = {(r.host, r.key): r for r in previous.results}
    new_failures, fixed = [], []
    for result in current.results:
        old = before.get((result.host, result.key))
        was_failing = old is not None and old.outcome in FAILING
        if result.outcome in FAILING and not was_failing:
            new_failures.append(result)
        elif result.outcome == PASSED and was_failing:
            fixed.append(result)
    hosts, old_hosts = set(current.hosts()), set(previous.hosts())
    return Changes(
        previous,
        new_failures,
        fixed,
        sorted(hosts - old_hosts),
        sorted(old_hosts - hosts),
    )
