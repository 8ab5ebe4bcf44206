"""The lab's state file: what the lab made, so that status, inventory and down can find it.

Written atomically (``iotfleet.fs.atomic``) after every step of ``up``, so that a crashed run
leaves a state file that ``down`` (or the next ``up``) can use to clean up.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from iotfleet.fleet.paths import state_root
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.fs.errors import LockBusyError
from iotfleet.fs.locks import acquire
from iotfleet.lab import naming
from iotfleet.lab.errors import LabError

STATE_FILE = "state.json"


class ProcessRef(BaseModel):
    """A process the lab started. The start time guards against a reused PID."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    start_time: int  # field 22 of /proc/PID/stat (clock ticks after boot)


class HostState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    slot: int  # 1..240: picks the address (.10 + slot) and the veth name
    fqdn: str
    address: str
    netns: str
    veth: str
    machine: str
    machine_id: str
    host_key: str  # public half, "ssh-ed25519 AAAA..."
    process: ProcessRef | None = None


class Attachment(BaseModel):
    """An emulated board plugged into a lab host: a device path there (``iotfleet lab attach``)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    device: str  # e.g. /dev/ttyUSB0, inside the host
    bridge: ProcessRef | None = None  # the serial bridge serving the device (see attach.py)


class GatewayState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    port: int
    mac: str
    flash_file: str
    process: ProcessRef | None = None
    # None: the board is on the control machine only (socket://127.0.0.1:PORT). State files
    # written before attachments existed load with None.
    attachment: Attachment | None = None


class LabState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str
    tag: str
    suite: str
    subnet: str
    bridge: str
    bridge_address: str
    base_dir: str
    repo_port: int
    repo_server: ProcessRef | None = None
    hosts: list[HostState] = Field(default_factory=list)
    gateways: list[GatewayState] = Field(default_factory=list)
    # Extra software devices of the lab fleet (``lab up --devices``); state files written
    # before the option existed load with 0.
    devices: int = 0

    def host(self, name: str) -> HostState | None:
        return next((h for h in self.hosts if h.name == name), None)

    def gateway(self, name: str) -> GatewayState | None:
        return next((g for g in self.gateways if g.name == name), None)


@dataclass(frozen=True)
class LabPaths:
    """Where one lab keeps its files on the control machine."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def hosts_dir(self) -> Path:
        return self.root / "hosts"

    @property
    def gateways_dir(self) -> Path:
        return self.root / "gateways"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def host_dir(self, host: str) -> Path:
        return self.hosts_dir / host

    def host_root(self, host: str) -> Path:
        """The host's merged overlay: what systemd-nspawn boots."""
        return self.host_dir(host) / "root"


def labs_root(root: Path | None = None) -> Path:
    return (root or state_root()) / "labs"


def lab_paths(name: str, root: Path | None = None) -> LabPaths:
    return LabPaths(labs_root(root) / name)


def lock_file(name: str, root: Path | None = None) -> Path:
    """Per-lab lock, beside (not inside) the lab directory so ``down`` can remove the latter."""
    return labs_root(root) / f".{name}.lock"


def load_state(path: Path) -> LabState | None:
    """The state in ``path``, ``None`` if there is none; a clear error if it is damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return LabState.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise LabError(
            f"lab state file {path} is damaged ({first}); run `iotfleet lab down` "
            "to clean up what it can find by name, then `iotfleet lab up` again"
        ) from None


def load_lab(name: str, root: Path | None = None) -> LabState:
    """The lab's state, or a clear error if there is no such lab."""
    name = naming.validate_lab_name(name)
    state = load_state(lab_paths(name, root).state_file)
    if state is None:
        raise LabError(f"no lab named {name!r}: run `iotfleet lab up --name {name}`")
    return state


def other_states(name: str, root: Path) -> list[LabState]:
    """The states of the other labs under ``root`` (damaged ones skipped)."""
    found = []
    labs = labs_root(root)
    if labs.is_dir():
        for entry in labs.iterdir():
            if entry.name == name or not entry.is_dir():
                continue
            try:
                other = load_state(entry / STATE_FILE)
            except LabError:
                continue
            if other is not None:
                found.append(other)
    return found


def save_state(path: Path, state: LabState) -> None:
    """Write ``state`` atomically: readers see the old or the new file, never half."""
    write_atomic(path, state.model_dump_json(indent=2) + "\n")


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` crash-safely (``iotfleet.fs.atomic``), world-readable
    by default, as are directories it creates: lab files land in host trees (``/etc/hosts``,
    a host's ``/etc``) that other users and services read."""
    write_file_atomically(path, text.encode(), mode=mode, dir_mode=0o755)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold an flock on ``path`` (``iotfleet.fs.locks``); wait for it at most ``timeout``
    seconds.

    Raises:
        LabError: another run held it all that time (naming ``what``, the lock and the holder).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        held = acquire(path, timeout=timeout, mode=0o644)
    except LockBusyError as busy:
        raise LabError(f"{what} is busy: {busy}") from None
    with held:
        yield
