"""Benchmark of the compliance suite: `iotfleet check inventory/lab.py` on 1 and 5 brokers.

Run as root:  .venv/bin/python bench/check.py [--brokers 5] [--runs 3] [--suite bookworm]

Brings up its own lab (``bench-check``) with the largest size, rolls it out once, then times
the whole suite (the real CLI: inventory loading, xdist workers, SSH, sslyze, MQTT probes,
reports) on the first broker alone (``--limit``) and on every broker. Prints each figure,
the ratio to the one-broker run and to the issue's target (<= 30 s for 5 brokers).
No assertions: the figures are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iotfleet.fleet.paths import fleet_dir
from iotfleet.lab.state import lab_paths, load_state

REPO = Path(__file__).resolve().parents[1]
NAME = "bench-check"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
TARGET_5_BROKERS_S = 30.0


def run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": NAME},
    )  # fmt: skip


def iotfleet(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "iotfleet", *args])


def lab_hosts() -> list[str]:
    state = load_state(lab_paths(NAME).state_file)
    assert state is not None, f"lab {NAME} has no state"
    return [host.fqdn for host in state.hosts]


def timed_check(reports: Path, *args: str) -> tuple[float, int, int]:
    """(seconds, checks run, checks failed) of one `iotfleet check`."""
    start = time.monotonic()
    result = iotfleet("check", "inventory/lab.py", "--reports", str(reports), *args)
    elapsed = time.monotonic() - start
    if result.returncode not in (0, 1):
        sys.exit(f"iotfleet check failed to run:\n{(result.stdout + result.stderr)[-4000:]}")
    data = json.loads((reports / "results.json").read_text())
    failed = sum(1 for r in data["results"] if r["outcome"] in ("failed", "error"))
    return elapsed, len(data["results"]), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brokers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/check.py needs root (it boots a lab)")

    figures: dict[int, list[float]] = {1: [], args.brokers: []}
    counts: dict[int, tuple[int, int]] = {}
    try:
        up = iotfleet(
            "lab", "up", "--name", NAME, "--brokers", str(args.brokers), "--suite", args.suite
        )
        if up.returncode != 0:
            sys.exit(f"lab up failed:\n{up.stderr}")
        rollout = run([PYINFRA, "-y", "inventory/lab.py", "deploy.py"])
        if rollout.returncode != 0:
            sys.exit(f"rollout failed:\n{(rollout.stdout + rollout.stderr)[-4000:]}")
        first = lab_hosts()[0]
        with tempfile.TemporaryDirectory(prefix="bench-check-") as reports:
            for _ in range(args.runs):
                for size, extra in ((1, ("--limit", first)), (args.brokers, ())):
                    seconds, total, failed = timed_check(Path(reports), *extra)
                    figures[size].append(seconds)
                    counts[size] = (total, failed)
                    print(
                        f"  {size} broker(s): {seconds:5.1f} s ({total} checks, {failed} failed)",
                        flush=True,
                    )
    finally:
        if not args.keep:
            iotfleet("lab", "down", "--name", NAME)
            shutil.rmtree(fleet_dir(NAME), ignore_errors=True)

    one = statistics.median(figures[1])
    many = statistics.median(figures[args.brokers])
    print(f"\niotfleet check bench ({os.cpu_count()} cores, {args.suite}, median of {args.runs})")
    print(f"  {'brokers':>7} {'checks':>7} {'seconds':>8} {'vs 1':>6} {'per broker':>11}")
    for size, seconds in ((1, one), (args.brokers, many)):
        print(
            f"  {size:>7} {counts[size][0]:>7} {seconds:>8.1f} {seconds / one:>6.2f}"
            f" {seconds / size:>11.1f}"
        )
    print(
        f"\n  target: <= {TARGET_5_BROKERS_S:.0f} s for 5 brokers; measured {many:.1f} s for "
        f"{args.brokers} ({many / TARGET_5_BROKERS_S:.2f} of the target: "
        f"{'met' if many <= TARGET_5_BROKERS_S else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
