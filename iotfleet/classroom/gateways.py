"""Simulated gateways for the class's emulated boards, in one background process.

``python -m iotfleet.classroom.gateways CLASS`` runs one ``GatewaySimulator`` per emulated
board (threads, so 30 students cost one process), each booted from what was flashed on its
board. When a board is re-flashed (a student reset), its gateway reboots from the new flash,
as a real board would. Every second it writes ``gateways.json``: per device, connected or not,
readings sent, last error (never a secret).
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pydantic import BaseModel

from iotfleet.classroom.spec import ClassSpec
from iotfleet.classroom.store import class_dir, load_class
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.gateway import GatewayError, GatewaySimulator, read_bundle
from iotfleet.lab.inventory import lab_inventory_groups
from iotfleet.lab.procs import is_alive, start_detached, stop_processes
from iotfleet.lab.state import ProcessRef

TELEMETRY_INTERVAL = 5.0
POLL_SECONDS = 1.0


class GatewayState(BaseModel):
    connected: bool = False
    telemetry_sent: int = 0
    connects: int = 0
    flashed: bool = False
    flash_sha256: str = ""  # of the flash the running gateway booted from
    last_error: str = ""


def status_file(class_name: str) -> Path:
    return class_dir(class_name) / "gateways.json"


def supervisor_file(class_name: str) -> Path:
    return class_dir(class_name) / "gateways.pid.json"


def read_status(class_name: str) -> dict[str, GatewayState]:
    try:
        raw = json.loads(status_file(class_name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {device: GatewayState.model_validate(state) for device, state in raw.items()}


@dataclass
class _Running:
    flash_digest: str
    simulator: GatewaySimulator


def _flash_files(spec: ClassSpec) -> dict[str, Path]:
    """Device -> flash file of each emulated board (from the class lab's state)."""
    groups = lab_inventory_groups(spec.name)
    boards = [b for _, data in groups.get("flash_stations", []) for b in data["espgw_boards"]]
    emulated = {s.device for s in spec.students if s.board.emulated}
    return {
        str(b["device"]): Path(str(b["flash_file"]))
        for b in boards
        if b["device"] in emulated and b.get("flash_file")
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Supervisor:
    """Keeps one simulator per emulated board running, rebooting it when its flash changes."""

    def __init__(self, class_name: str, interval: float = TELEMETRY_INTERVAL) -> None:
        self.class_name = class_name
        self.interval = interval
        self.running: dict[str, _Running] = {}
        self.errors: dict[str, str] = {}
        self.stop_event = threading.Event()

    def step(self) -> None:
        spec = load_class(self.class_name)
        files = _flash_files(spec)
        for device in [d for d in self.running if d not in files]:
            self.running.pop(device).simulator.stop()
        for device, flash in files.items():
            self._converge(device, flash)
        self._write_status(files)

    def _converge(self, device: str, flash: Path) -> None:
        try:
            digest = _digest(flash)
        except OSError as exc:
            self.errors[device] = f"flash file unreadable: {exc.strerror}"
            return
        current = self.running.get(device)
        if current is not None and current.flash_digest == digest:
            return
        if current is not None:
            current.simulator.stop()
            del self.running[device]
        try:
            bundle = read_bundle(flash)
        except GatewayError as exc:
            self.errors[device] = f"not flashed yet ({exc})"
            return
        self.errors.pop(device, None)
        simulator = GatewaySimulator(bundle, telemetry_interval=self.interval).start()
        self.running[device] = _Running(digest, simulator)

    def _write_status(self, files: dict[str, Path]) -> None:
        states = {}
        for device in sorted(files):
            running = self.running.get(device)
            if running is None:
                states[device] = GatewayState(last_error=self.errors.get(device, ""))
                continue
            stats = running.simulator.stats
            states[device] = GatewayState(
                connected=running.simulator.connected,
                telemetry_sent=stats.telemetry_sent,
                connects=stats.connects,
                flashed=True,
                flash_sha256=running.flash_digest,
                last_error=stats.last_error,
            )
        data = {device: state.model_dump() for device, state in states.items()}
        write_file_atomically(
            status_file(self.class_name), json.dumps(data, indent=1).encode(), mode=0o644
        )

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception as exc:  # a bad moment (lab changing) must not end the class
                print(f"iotfleet classroom gateways: {type(exc).__name__}: {exc}", flush=True)
            self.stop_event.wait(POLL_SECONDS)
        for running in self.running.values():
            running.simulator.stop()


def start_supervisor(class_name: str) -> ProcessRef:
    """Start (or keep) the class's gateway process; its PID is kept beside class.json."""
    existing = running_supervisor(class_name)
    if existing is not None:
        return existing
    log = class_dir(class_name) / "logs" / "gateways.log"
    ref = start_detached([sys.executable, "-m", "iotfleet.classroom.gateways", class_name], log)
    write_file_atomically(supervisor_file(class_name), ref.model_dump_json().encode(), mode=0o644)
    return ref


def running_supervisor(class_name: str) -> ProcessRef | None:
    try:
        ref = ProcessRef.model_validate_json(supervisor_file(class_name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return ref if is_alive(ref) else None


def stop_supervisor(class_name: str) -> bool:
    """Stop the class's gateway process (by its recorded PID); True if one was running."""
    ref = running_supervisor(class_name)
    if ref is not None:
        stop_processes([ref], timeout=15)
    supervisor_file(class_name).unlink(missing_ok=True)
    status_file(class_name).unlink(missing_ok=True)
    return ref is not None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m iotfleet.classroom.gateways CLASS", file=sys.stderr)
        return 2
    supervisor = Supervisor(argv[0])

    def stop(_signum: int, _frame: FrameType | None) -> None:
        supervisor.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
