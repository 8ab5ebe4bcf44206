"""The HTTP server that gives a lab's hosts their package source (flat apt repository).

One server per lab, bound to the lab bridge's address only, started detached and recorded by
PID in the lab's state; ``down`` stops exactly that process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from iotfleet.lab.errors import LabError
from iotfleet.lab.network import port_accepts
from iotfleet.lab.procs import is_alive, start_detached, stop_processes
from iotfleet.lab.state import ProcessRef

REPO_PORT = 8642


def repo_url(address: str, port: int = REPO_PORT) -> str:
    return f"http://{address}:{port}/"


def start_repo_server(repo: Path, address: str, port: int, log: Path) -> ProcessRef:
    """Serve ``repo`` on ``address:port`` and wait until it accepts connections."""
    ref = start_detached(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            address,
            "--directory",
            str(repo),
            str(port),
        ],
        log,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if port_accepts(address, port, timeout=0.5):
            return ref
        if not is_alive(ref):
            break
        time.sleep(0.05)
    stop_processes([ref], timeout=2)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise LabError(
        f"the lab's package server did not start on {address}:{port} "
        f"({' '.join(tail) or 'no output'}; log: {log})"
    )
