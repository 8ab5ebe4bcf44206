"""Run the real ``iotfleet check`` CLI against a lab and read its results (``results.json``)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from iotfleet.check.results import RunResults
from tests.support.rollout import REPO


@dataclass(frozen=True)
class CheckRun:
    returncode: int
    output: str
    results: RunResults | None

    def failed_checks(self, host: str | None = None) -> dict[str, list[str]]:
        """``{check function: [messages]}`` of every failed check (on ``host`` if given)."""
        failed: dict[str, list[str]] = {}
        for result in self.results.failed if self.results else []:
            if host is None or result.host == host:
                failed.setdefault(result.function, []).append(result.message)
        return failed

    def outcomes(self, check: str) -> dict[str, str]:
        """``{host: outcome}`` of one check function."""
        return {
            r.host: r.outcome
            for r in (self.results.results if self.results else [])
            if r.function == check
        }

    def messages(self, check: str, host: str) -> list[str]:
        """The failure messages of one check function on ``host``."""
        return self.failed_checks(host).get(check, [])

    def explain(self) -> str:
        return f"iotfleet check exited {self.returncode}:\n{self.output[-8000:]}"


def run_check(lab_name: str, reports: Path, *args: str, timeout: float = 900) -> CheckRun:
    """``iotfleet check inventory/lab.py --reports <reports> <args>`` for the lab ``lab_name``
    (a wide terminal: the summary's lines are not wrapped)."""
    result = subprocess.run(
        [sys.executable, "-m", "iotfleet", "check", "inventory/lab.py",
         "--reports", str(reports), *args],
        cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": lab_name, "COLUMNS": "400"},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    results_file = reports / "results.json"
    results = RunResults.load(results_file) if results_file.is_file() else None
    return CheckRun(result.returncode, result.stdout + result.stderr, results)
