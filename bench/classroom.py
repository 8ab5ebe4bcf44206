"""Benchmark: roster to every simulated gateway connected, for a class of 30 (and of 1).

Run as root:  .venv/bin/python bench/classroom.py [--students 30] [--with-check]

Each run starts from nothing but the cached lab base: a fresh class (new CA, new lab hosts,
new emulated boards), then `iotfleet classroom new ROSTER.csv` and `iotfleet classroom up`,
timed until every student's gateway is connected (the compliance check is timed apart with
--with-check). The one-student class is the baseline: what a class costs before students.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iotfleet.classroom.store import class_dir
from iotfleet.fleet.paths import fleet_dir

REPO = Path(__file__).resolve().parents[1]
TARGET_30_S = 180.0


def iotfleet(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotfleet", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
    )  # fmt: skip


def forget(name: str) -> None:
    iotfleet("classroom", "down", "--name", name)
    shutil.rmtree(class_dir(name), ignore_errors=True)
    shutil.rmtree(fleet_dir(name), ignore_errors=True)


def timed_class(name: str, students: int, with_check: bool) -> tuple[float, float | None]:
    """Seconds from roster to all connected, and the compliance check's seconds."""
    forget(name)
    with tempfile.TemporaryDirectory() as work:
        roster = Path(work) / "roster.csv"
        roster.write_text("name\n" + "".join(f"Student {i}\n" for i in range(1, students + 1)))
        start = time.monotonic()
        made = iotfleet("classroom", "new", str(roster), "--name", name)
        if made.returncode != 0:
            sys.exit(f"classroom new failed:\n{made.stderr}")
        up = iotfleet("classroom", "up", "--name", name, "--no-check")
        connected = time.monotonic() - start
    if up.returncode != 0:
        sys.exit(f"classroom up failed:\n{(up.stdout + up.stderr)[-3000:]}")
    check_s = None
    if with_check:
        start = time.monotonic()
        checked = subprocess.run(
            [sys.executable, "-m", "iotfleet", "check", "inventory/classroom.py",
             "--reports", str(class_dir(name) / "reports")],
            capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
            env={**os.environ, "IOTFLEET_CLASS": name},
        )  # fmt: skip
        check_s = time.monotonic() - start
        if checked.returncode != 0:
            print(f"  note: the compliance check failed:\n{checked.stdout[-2000:]}")
    forget(name)
    return connected, check_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--with-check", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/classroom.py needs root (it boots a lab)")

    one, one_check = timed_class("bench-class1", 1, args.with_check)
    many, many_check = timed_class("bench-class", args.students, args.with_check)

    print(f"\niotfleet classroom bench ({os.cpu_count()} cores; baseline = a 1-student class)")
    print(f"  {'class':<22} {'roster -> connected':>20} {'vs 1':>7} {'check':>8}")
    print(
        f"  {'1 student':<22} {one:>18.1f} s {1.0:>7.2f} "
        f"{'' if one_check is None else f'{one_check:.1f} s':>8}"
    )
    print(
        f"  {f'{args.students} students':<22} {many:>18.1f} s {many / one:>7.2f} "
        f"{'' if many_check is None else f'{many_check:.1f} s':>8}"
    )
    verdict = "met" if many <= TARGET_30_S else "MISSED"
    print(
        f"\n  target: {args.students} students connected <= {TARGET_30_S:.0f} s: "
        f"{many:.1f} s ({many / TARGET_30_S:.2f} of the target) {verdict}"
    )


if __name__ == "__main__":
    main()
