"""Run the real ``pyinfra`` CLI against a lab and read what it reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
_TOTAL = re.compile(r"Grand total\s+(\d+)\s+(\d+|-)\s+(\d+|-)\s+(\d+|-)")
# A remote command as ``pyinfra -vvv`` prints it, and a row of its results table.
_COMMAND = re.compile(r"^\[([^\]]+)\] >>> ", re.MULTILINE)
_RESULT_ROW = re.compile(
    r"^\s+\S+ \| (.+?)\s+(\d+)\s+(\d+|-)\s+(\d+|-)\s+(\d+|-)\s*$", re.MULTILINE
)


def commands_by_host(output: str, hosts: list[str] | None = None) -> dict[str, int]:
    """Remote commands each host ran in a ``pyinfra -vvv`` run (its ``[host] >>> `` lines);
    ``hosts``: only these (each listed, 0 if it ran none)."""
    counts = dict.fromkeys(hosts or [], 0)
    for match in _COMMAND.finditer(output):
        if hosts is None or match.group(1) in counts:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def changed_operations(output: str) -> list[str]:
    """Names (``role | operation``) of the operations the results table lists as changed."""
    return [m.group(1) for m in _RESULT_ROW.finditer(output) if m.group(3) != "-"]


@dataclass(frozen=True)
class Rollout:
    returncode: int
    output: str
    operations: int
    changed: int
    errors: int
    unchanged: int

    def explain(self) -> str:
        return f"pyinfra exited {self.returncode}:\n{self.output[-6000:]}"


def run_pyinfra(
    lab_name: str,
    deploy: str = "deploy.py",
    *extra: str,
    inventory: str = "inventory/lab.py",
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> Rollout:
    """``pyinfra -y <inventory> <deploy>`` for the lab ``lab_name``; parses the results table."""
    result = subprocess.run(
        [PYINFRA, "-y", *extra, inventory, deploy],
        cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": lab_name, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    counts = [0, 0, 0, 0]
    match = _TOTAL.search(output)
    if match:
        counts = [0 if value == "-" else int(value) for value in match.groups()]
    return Rollout(result.returncode, output, *counts)


def run_iotfleet(
    *args: str, lab_name: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """The real ``iotfleet`` CLI, optionally aimed at a lab."""
    env = {**os.environ, **({"IOTFLEET_LAB": lab_name} if lab_name else {})}
    return subprocess.run(
        [sys.executable, "-m", "iotfleet", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
