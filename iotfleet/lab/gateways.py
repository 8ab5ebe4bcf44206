"""Emulated ESP8266 boards: one ``iotfleet.emulator`` process per board on a loopback port.

Contract (implemented by ``iotfleet.emulator``): ``python -m iotfleet.emulator --listen
127.0.0.1:PORT --flash FILE --mac MAC`` serves one board until SIGTERM, its flash kept in FILE.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from iotfleet.lab.errors import LabError
from iotfleet.lab.network import port_accepts
from iotfleet.lab.procs import is_alive, start_detached, stop_processes
from iotfleet.lab.state import GatewayState, ProcessRef

LOOPBACK = "127.0.0.1"


def free_loopback_port(avoid: Sequence[int] = ()) -> int:
    """A TCP port on loopback that nothing listens on now (the kernel picks it)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise LabError("no free TCP port on loopback for an emulated gateway")


def emulator_argv(port: int, flash_file: str, mac: str, python: str = sys.executable) -> list[str]:
    return [
        python,
        "-m",
        "iotfleet.emulator",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--flash",
        flash_file,
        "--mac",
        mac,
        # Counters after each session (bytes programmed...): shows a rollout wrote nothing.
        "--stats",
        stats_file(flash_file),
    ]


def stats_file(flash_file: str) -> str:
    return str(Path(flash_file).with_suffix(".stats.json"))


def start_gateway(
    gateway: GatewayState, log: Path, argv: list[str] | None = None, timeout: float = 15.0
) -> ProcessRef:
    """Start one board and wait until its port accepts connections."""
    ref = start_detached(argv or emulator_argv(gateway.port, gateway.flash_file, gateway.mac), log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(LOOPBACK, gateway.port, timeout=0.5):
            return ref
        if not is_alive(ref):
            break
        time.sleep(0.05)
    stop_processes([ref], timeout=2)
    raise LabError(
        f"emulated gateway {gateway.name} did not listen on {LOOPBACK}:{gateway.port} "
        f"within {timeout:.0f} s; see {log}"
    )


def gateway_running(gateway: GatewayState) -> bool:
    return is_alive(gateway.process) and port_accepts(LOOPBACK, gateway.port, timeout=0.5)
