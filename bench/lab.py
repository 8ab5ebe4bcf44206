"""Benchmark of the lab: time to bring hosts up, memory per idle host, disk per extra host.

Run as root:  .venv/bin/python bench/lab.py [--uncached] [--no-fifty]

Prints each figure beside its target and the ratio (measured / target; <= 1 meets it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iotfleet.lab.network import NETNS_DIR
from iotfleet.lab.procs import pids_in_netns
from iotfleet.lab.state import lab_paths, load_state

REPO = Path(__file__).resolve().parents[1]
NAME = "bench"

TARGET_UP_20_S = 20.0
TARGET_MEM_PER_HOST_MB = 48.0
TARGET_HOSTS = 50


def iotfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotfleet", *args],
        capture_output=True, text=True, timeout=1800, check=False, cwd=REPO, env=env,
    )  # fmt: skip


def timed_up(brokers: int, env: dict[str, str] | None = None) -> float:
    iotfleet("lab", "down", "--name", NAME, env=env)
    start = time.monotonic()
    result = iotfleet("lab", "up", "--name", NAME, "--brokers", str(brokers), env=env)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"lab up --brokers {brokers} failed:\n{result.stderr}")
    for line in result.stderr.splitlines():
        if "note:" in line:
            print(f"    {line.strip()}")
    return elapsed


def running_hosts(env: dict[str, str] | None = None) -> int:
    out = iotfleet("lab", "status", "--name", NAME, env=env).stdout
    return sum(1 for line in out.splitlines() if "│ running" in line)


def kib_field(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def mem_available_kib() -> int:
    return kib_field(Path("/proc/meminfo"), "MemAvailable")


def host_memory_kib() -> tuple[float, float]:
    """Mean (PSS, RSS) in KiB over hosts: every process in the host's namespace + its nspawn."""
    state = load_state(lab_paths(NAME).state_file)
    assert state is not None
    pss_total = rss_total = 0
    for host in state.hosts:
        pids = pids_in_netns(NETNS_DIR / host.netns)
        if host.process:
            pids.append(host.process.pid)
        for pid in pids:
            pss_total += kib_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss")
            rss_total += kib_field(Path(f"/proc/{pid}/status"), "VmRSS")
    n = max(1, len(state.hosts))
    return pss_total / n, rss_total / n


def upper_layer_bytes() -> float:
    paths = lab_paths(NAME)
    state = load_state(paths.state_file)
    assert state is not None
    sizes = []
    for host in state.hosts:
        out = subprocess.run(
            ["du", "-sb", str(paths.host_dir(host.name) / "upper")],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        sizes.append(int(out.split()[0]))
    return sum(sizes) / max(1, len(sizes))


def row(metric: str, measured: float, unit: str, target: float | None) -> str:
    if target is None:
        return f"  {metric:<38} {measured:>9.1f} {unit:<4} {'':>10} {'':>7}"
    ratio = measured / target
    verdict = "met" if ratio <= 1 else "MISSED"
    return f"  {metric:<38} {measured:>9.1f} {unit:<4} {target:>10.1f} {ratio:>7.2f}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uncached", action="store_true", help="also time a cold base build")
    parser.add_argument("--no-fifty", action="store_true", help="skip the 50-host run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/lab.py needs root (it boots a lab)")

    rows: list[str] = []
    if args.uncached:
        with tempfile.TemporaryDirectory(prefix="iotfleet-bench-") as home:
            env = {**os.environ, "IOTFLEET_HOME": home}
            cold = timed_up(1, env)
            iotfleet("lab", "down", "--name", NAME, env=env)
        rows.append(row("up 1 host, base NOT cached (build)", cold, "s", None))

    timed_up(1)  # make sure the base is cached before timing
    for n in (1, 5):
        rows.append(row(f"up {n} host(s), base cached", timed_up(n), "s", None))
    mem_before = mem_available_kib()
    up20 = timed_up(20)
    running20 = running_hosts()
    rows.append(row(f"up 20 hosts, base cached ({running20} running)", up20, "s", TARGET_UP_20_S))
    time.sleep(15)  # let the hosts settle to idle
    pss, rss = host_memory_kib()
    delta = (mem_before - mem_available_kib()) / 20
    rows.append(row("memory per idle host (PSS sum)", pss / 1024, "MB", TARGET_MEM_PER_HOST_MB))
    rows.append(row("memory per idle host (RSS sum)", rss / 1024, "MB", TARGET_MEM_PER_HOST_MB))
    rows.append(row("memory per host (MemAvailable drop)", delta / 1024, "MB", None))
    rows.append(row("disk per extra host (upper layer)", upper_layer_bytes() / 1e6, "MB", None))
    if not args.no_fifty:
        up50 = timed_up(50)
        running50 = running_hosts()
        rows.append(row("up 50 hosts, base cached", up50, "s", None))
        verdict = "met" if running50 >= TARGET_HOSTS else "MISSED"
        rows.append(
            f"  {'hosts running after up 50':<38} {running50:>9d}      "
            f"{TARGET_HOSTS:>10d} {'':>7}  {verdict}"
        )
    iotfleet("lab", "down", "--name", NAME)

    print(f"\niotfleet lab bench ({os.cpu_count()} cores)")
    print(f"  {'metric':<38} {'measured':>14} {'target':>10} {'ratio':>7}")
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
