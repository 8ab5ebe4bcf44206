"""Boards on device paths: ``iotfleet lab attach gw1 broker1`` plugs an emulated board into a
lab host as /dev/ttyUSB0, like a USB board on a flash station.

Why: remote flashing opens an SSH channel to the station and runs a serial relay there that
opens the board's device path; attaching lets that be tested on real lab hosts.

How: a bridge process (``serial_bridge.py``, run by the host's own python3) lives in the
host's mount namespace (so its pty and the device link exist only there) and in this machine's
network namespace (so it reaches the emulator, which listens on loopback only). It is started
here with ``nsenter`` and recorded by PID like every lab process.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from iotfleet.lab import naming, preflight
from iotfleet.lab.errors import LabError
from iotfleet.lab.gateways import LOOPBACK, gateway_running
from iotfleet.lab.procs import is_alive, start_detached, stop_processes
from iotfleet.lab.state import (
    Attachment,
    GatewayState,
    HostState,
    LabPaths,
    LabState,
    ProcessRef,
    exclusive_lock,
    lab_paths,
    load_state,
    lock_file,
    save_state,
)

DEFAULT_DEVICE = "/dev/ttyUSB0"
BRIDGE_SCRIPT = Path(__file__).with_name("serial_bridge.py")
HOST_PYTHON = "/usr/bin/python3"  # the host's own (bookworm 3.11, trixie 3.13)
# Under /dev only: it is the host's own tmpfs, so a link never outlives the host's boot.
_DEVICE_RE = re.compile(r"^/dev(/[A-Za-z0-9_.:@+-]+)+$")


@dataclass(frozen=True)
class Plan:
    """What ``attach`` is about to do (validated, nothing changed yet)."""

    gateway: GatewayState
    host: HostState
    device: str
    already: bool  # attached there before: only its bridge may need restarting


def check_device(device: str) -> str:
    """``device`` if it is a plain absolute path under /dev, else a clear error."""
    if not device.startswith("/"):
        raise LabError(f"--device {device!r}: give an absolute path, e.g. {DEFAULT_DEVICE}")
    if os.path.normpath(device) != device or not _DEVICE_RE.match(device):
        raise LabError(
            f"--device {device!r}: give a plain path under /dev (letters, digits, . _ - : @ +), "
            f"e.g. {DEFAULT_DEVICE}"
        )
    if device.startswith("/dev/pts/") or device == "/dev/pts":
        raise LabError(f"--device {device!r}: /dev/pts belongs to the host's terminals")
    return device


def plan_attach(state: LabState, gateway: str, host: str, device: str) -> Plan:
    """Validate an attach against the lab's state; raise before anything is changed."""
    device = check_device(device)
    gw = state.gateway(gateway)
    if gw is None:
        known = ", ".join(g.name for g in state.gateways) or "none"
        raise LabError(f"lab {state.name!r} has no gateway {gateway!r} (gateways: {known})")
    target = state.host(host)
    if target is None:
        known = ", ".join(h.name for h in state.hosts) or "none"
        raise LabError(f"lab {state.name!r} has no host {host!r} (hosts: {known})")
    current = gw.attachment
    if current is not None and (current.host, current.device) != (host, device):
        raise LabError(
            f"gateway {gateway!r} is already attached to {current.host} at {current.device}: "
            f"run `iotfleet lab detach {gateway} --name {state.name}` first"
        )
    for other in state.gateways:
        taken = other.attachment
        if other is not gw and taken is not None and (taken.host, taken.device) == (host, device):
            raise LabError(f"{device} on {host} is already gateway {other.name!r}")
    return Plan(gw, target, device, already=current is not None)


# ------------------------------------------------------------------ the host's side


def host_init_pid(process: ProcessRef | None, proc: Path = Path("/proc")) -> int | None:
    """PID (on this machine) of the host's systemd, the child of its nspawn process; None if
    the host is not running."""
    if process is None or not is_alive(process):
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == process.pid:
            return int(entry.name)
    return None


def mount_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def in_host(init_pid: int, path: str) -> Path:
    """``path`` as the host sees it (through its systemd's root, from this machine)."""
    return Path(f"/proc/{init_pid}/root{path}")


def bridge_argv(init_pid: int, port: int, device: str) -> list[str]:
    # python3 -I: no PYTHON* variables, no user site, no cwd on sys.path - only the stdlib.
    return [
        "nsenter",
        f"--target={init_pid}",
        "--mount",
        "--",
        HOST_PYTHON,
        "-I",
        "-c",
        BRIDGE_SCRIPT.read_text(),
        str(port),
        device,
        str(init_pid),
    ]


def bridge_log(paths: LabPaths, gateway: str) -> Path:
    return paths.logs_dir / f"{gateway}.bridge.log"


def start_bridge(
    gw: GatewayState, host: HostState, device: str, log: Path, timeout: float = 10.0
) -> ProcessRef:
    """Start the bridge and wait until the device link exists in the host."""
    init_pid = host_init_pid(host.process)
    if init_pid is None:
        raise LabError(f"host {host.name} is not running: run `iotfleet lab up` first")
    # Clear messages first; the bridge refuses too (os.symlink), should the path appear now.
    if os.path.lexists(in_host(init_pid, device)):
        raise LabError(f"{device} already exists on {host.name}: pick another --device")
    parent = os.path.dirname(device)
    if not in_host(init_pid, parent).is_dir():
        raise LabError(f"{parent} does not exist on {host.name}: pick another --device")
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    ref = start_detached(bridge_argv(init_pid, gw.port, device), log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _link_target(init_pid, device).startswith("/dev/pts/") and is_alive(ref):
            return ref
        if not is_alive(ref):
            break
        time.sleep(0.05)
    stop_processes([ref], timeout=2)
    said = log.read_bytes()[offset:].decode(errors="replace").strip().splitlines()
    reason = said[-1].removeprefix("serial bridge: ") if said else f"see {log}"
    raise LabError(f"cannot attach {gw.name} to {host.name} at {device}: {reason}")


def _link_target(init_pid: int, device: str) -> str:
    try:
        return os.readlink(in_host(init_pid, device))
    except OSError:
        return ""


def bridge_state(state: LabState, gw: GatewayState) -> str | None:
    """None (not attached), running, stopped, or stale (alive but its host has restarted)."""
    if gw.attachment is None:
        return None
    bridge = gw.attachment.bridge
    if bridge is None or not is_alive(bridge):
        return "stopped"
    host = state.host(gw.attachment.host)
    init_pid = host_init_pid(host.process) if host else None
    if init_pid is None or mount_ns(init_pid) != mount_ns(bridge.pid):
        return "stale"
    return "running"


def stop_bridges(gateways: Iterable[GatewayState]) -> None:
    """Stop the bridges of ``gateways`` by PID (SIGTERM: each removes its device link)."""
    stop_processes([g.attachment.bridge for g in gateways if g.attachment is not None], timeout=5)


def _remove_stale_link(host: HostState | None, device: str) -> None:
    """A bridge killed hard leaves its link: remove it if it still points at a pty."""
    init_pid = host_init_pid(host.process) if host else None
    if init_pid is not None and _link_target(init_pid, device).startswith("/dev/pts/"):
        with contextlib.suppress(FileNotFoundError):
            in_host(init_pid, device).unlink()


def release(state: LabState, gateways: Iterable[GatewayState]) -> list[str]:
    """Detach ``gateways``: stop their bridges, remove their links; names of those detached."""
    attached = [g for g in gateways if g.attachment is not None]
    stop_bridges(attached)
    for gw in attached:
        assert gw.attachment is not None
        _remove_stale_link(state.host(gw.attachment.host), gw.attachment.device)
        gw.attachment = None
    return [g.name for g in attached]


def release_hosts(state: LabState, hosts: Iterable[str]) -> list[str]:
    """Detach every gateway attached to one of ``hosts`` (they are being removed)."""
    names = set(hosts)
    return release(
        state, [g for g in state.gateways if g.attachment and g.attachment.host in names]
    )


def reattach(state: LabState, paths: LabPaths) -> list[str]:
    """Restart the bridge of each attachment whose bridge is gone or stale (its host was
    restarted, so it has a new mount namespace). Returns notes for the caller to report."""
    notes = []
    for gw in state.gateways:
        where = gw.attachment
        if where is None or bridge_state(state, gw) == "running":
            continue
        stop_bridges([gw])
        host = state.host(where.host)
        if host is None:  # cannot happen through the CLI; do not list it at a missing host
            gw.attachment = None
            notes.append(f"detached {gw.name}: its host {where.host} is gone")
            continue
        try:
            where.bridge = start_bridge(gw, host, where.device, bridge_log(paths, gw.name))
            notes.append(f"re-attached {gw.name} to {host.name} at {where.device}")
        except LabError as exc:
            where.bridge = None
            notes.append(f"{exc} (still recorded as attached; `iotfleet lab detach {gw.name}`)")
        save_state(paths.state_file, state)
    return notes


# ------------------------------------------------------------------ commands


def attach(
    lab_name: str,
    gateway: str,
    host: str,
    device: str = DEFAULT_DEVICE,
    root: Path | None = None,
    euid: int | None = None,
) -> tuple[Attachment, bool]:
    """Attach ``gateway`` to ``host`` at ``device``; (the attachment, whether anything changed).

    Attaching again to the same place only restarts a bridge that is gone.
    """
    name = naming.validate_lab_name(lab_name)
    check_device(device)
    preflight.check_root(os.geteuid() if euid is None else euid)
    paths = lab_paths(name, root)
    with exclusive_lock(lock_file(name, root), f"lab {name!r}"):
        state = _load(name, paths)
        plan = plan_attach(state, gateway, host, device)
        gw = plan.gateway
        if plan.already and gw.attachment is not None and bridge_state(state, gw) == "running":
            return gw.attachment, False
        if not gateway_running(gw):
            raise LabError(
                f"gateway {gw.name} is not listening on {LOOPBACK}:{gw.port}: "
                f"run `iotfleet lab up --name {name}` first"
            )
        if plan.already:
            stop_bridges([gw])
        bridge = start_bridge(gw, plan.host, plan.device, bridge_log(paths, gw.name))
        gw.attachment = Attachment(host=plan.host.name, device=plan.device, bridge=bridge)
        save_state(paths.state_file, state)
        return gw.attachment, True


def detach(
    lab_name: str, gateway: str, root: Path | None = None, euid: int | None = None
) -> Attachment | None:
    """Detach ``gateway``: stop its bridge, remove the device; what it was (None: it was not
    attached - safe to run twice)."""
    name = naming.validate_lab_name(lab_name)
    preflight.check_root(os.geteuid() if euid is None else euid)
    paths = lab_paths(name, root)
    with exclusive_lock(lock_file(name, root), f"lab {name!r}"):
        state = _load(name, paths)
        gw = state.gateway(gateway)
        if gw is None:
            known = ", ".join(g.name for g in state.gateways) or "none"
            raise LabError(f"lab {name!r} has no gateway {gateway!r} (gateways: {known})")
        was = gw.attachment
        if was is not None:
            release(state, [gw])
            save_state(paths.state_file, state)
        return was


def _load(name: str, paths: LabPaths) -> LabState:
    state = load_state(paths.state_file)
    if state is None:
        raise LabError(f"no lab named {name!r}: run `iotfleet lab up --name {name}`")
    return state
