"""Benchmark of the broker rollout: first and no-change `pyinfra ... deploy.py` on 1, 5, 20 brokers.

Run as root:  .venv/bin/python bench/rollout.py [--sizes 1 5 20] [--suite bookworm]

Each size gets a fresh lab and a fresh fleet state (new CA, new hosts), so "first" is what a
new fleet costs: packages, PKI, configuration tested on spare ports, health checks, firewall.
Prints every figure beside the one-broker baseline and the issue's targets, with the floor the
no-change run is compared with: an empty deploy (bench/deploys/empty.py) on the same hosts, and
the remote commands per broker of the no-change run (counted from pyinfra -vvv's ``>>>`` lines).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from iotfleet.fleet.paths import fleet_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo's tests
from tests.support.rollout import commands_by_host

REPO = Path(__file__).resolve().parents[1]
NAME = "bench-rollout"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))

# Issue 16: a no-change rollout of 20 within 1.5x of one broker's and <= 3 s on a quiet machine;
# a first rollout of 20 within 2x of one broker's.
TARGET_NO_CHANGE_20_S = 3.0
TARGET_NO_CHANGE_20_VS_1 = 1.5
TARGET_FIRST_20_VS_1 = 2.0
EMPTY_DEPLOY = "bench/deploys/empty.py"


def run(
    argv: list[str], timeout: float = 1800, lab: str = NAME
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": lab},
    )  # fmt: skip


def iotfleet(*args: str, lab: str = NAME) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "iotfleet", *args], lab=lab)


def fresh_lab(brokers: int, suite: str, lab: str = NAME) -> None:
    """Lab ``lab`` down and up again with ``brokers`` new hosts, and no fleet state."""
    iotfleet("lab", "down", "--name", lab, lab=lab)
    shutil.rmtree(fleet_dir(lab), ignore_errors=True)
    up = iotfleet("lab", "up", "--name", lab, "--brokers", str(brokers), "--suite", suite, lab=lab)
    if up.returncode != 0:
        sys.exit(f"lab up --brokers {brokers} failed:\n{up.stderr}")


def timed_rollout(
    deploy: str = "deploy.py", *flags: str, inventory: str = "inventory/lab.py", lab: str = NAME
) -> tuple[float, str, str]:
    """(seconds, the results' grand total, the output) of one ``pyinfra -y``."""
    start = time.monotonic()
    result = run([PYINFRA, "-y", *flags, inventory, deploy], lab=lab)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        first_error = max(0, output.find("rror") - 2000)
        sys.exit(
            f"rollout failed:\n{output[first_error : first_error + 4000]}\n...\n{output[-1500:]}"
        )
    total = next((line.split()[-4:] for line in output.splitlines() if "Grand total" in line), [])
    return elapsed, " ".join(total), output


def commands_per_host(output: str) -> float:
    """Remote commands per host of a ``pyinfra -vvv`` run (its ``[host] >>> cmd`` lines)."""
    hosts = commands_by_host(output)
    return sum(hosts.values()) / len(hosts) if hosts else 0.0


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--lab", default=NAME, help=f"the lab's name (default {NAME})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/rollout.py needs root (it boots a lab)")
    lab = args.lab
    sizes = sorted(set(args.sizes) | {1})

    first: dict[int, float] = {}
    again: dict[int, float] = {}
    counts: dict[int, str] = {}
    empty: dict[int, float] = {}
    commands: dict[int, float] = {}
    loads: dict[int, str] = {}
    try:
        for n in sizes:
            fresh_lab(n, args.suite, lab)
            first[n], _, _ = timed_rollout(lab=lab)
            again[n], counts[n], _ = timed_rollout(lab=lab)
            empty[n], _, _ = timed_rollout(EMPTY_DEPLOY, lab=lab)
            _, _, verbose = timed_rollout("deploy.py", "-vvv", lab=lab)  # counted, not timed
            commands[n] = commands_per_host(verbose)
            loads[n] = load()
            print(
                f"  {n:>3} broker(s): first {first[n]:6.1f} s, no-change {again[n]:6.1f} s, "
                f"empty deploy {empty[n]:5.1f} s, {commands[n]:.0f} commands/host, "
                f"load {loads[n]}",
                flush=True,
            )
    finally:
        iotfleet("lab", "down", "--name", lab, lab=lab)
        shutil.rmtree(fleet_dir(lab), ignore_errors=True)

    print(f"\niotfleet rollout bench ({os.cpu_count()} cores, {args.suite}; baseline = 1 broker)")
    print(
        f"  {'brokers':>7} {'first s':>9} {'vs 1':>6} {'no-change s':>12} {'vs 1':>6}"
        f" {'floor s':>8} {'cmds/host':>10} {'load':>11}  no-change totals (ok/err/no-change)"
    )
    for n in sizes:
        print(
            f"  {n:>7} {first[n]:>9.1f} {first[n] / first[1]:>6.2f} {again[n]:>12.1f}"
            f" {again[n] / again[1]:>6.2f} {empty[n]:>8.1f} {commands[n]:>10.0f}"
            f" {loads[n]:>11}  {counts[n]}"
        )
    print("  floor: an empty deploy on the same hosts (pyinfra's own cost)")
    largest = max(sizes)
    ratio = first[largest] / first[1]
    print("\n  targets")
    print(
        f"    no-change rollout of {largest}: {again[largest]:.1f} s "
        f"(target <= {TARGET_NO_CHANGE_20_S:.0f} s for 20 on a quiet machine: "
        f"{'met' if again[largest] <= TARGET_NO_CHANGE_20_S else 'MISSED'})"
    )
    no_change_ratio = again[largest] / again[1]
    print(
        f"    no-change rollout of {largest} vs 1: {no_change_ratio:.2f}x "
        f"(target <= {TARGET_NO_CHANGE_20_VS_1}x: "
        f"{'met' if no_change_ratio <= TARGET_NO_CHANGE_20_VS_1 else 'MISSED'})"
    )
    print(
        f"    first rollout of {largest} vs 1: {ratio:.2f}x "
        f"(target <= {TARGET_FIRST_20_VS_1:.0f}x: "
        f"{'met' if ratio <= TARGET_FIRST_20_VS_1 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
