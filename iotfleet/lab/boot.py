"""Boot, wait for and stop one lab host: an overlay root booted by systemd-nspawn.

systemd runs as the host's PID 1. Without a systemd on the control machine, nspawn needs
``--register=no --keep-unit`` and a tmpfs on /run/systemd/nspawn (see docs/lab.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iotfleet.lab.errors import LabError
from iotfleet.lab.network import NETNS_DIR, tcp_banner
from iotfleet.lab.procs import (
    is_alive,
    kill_pids,
    pids_in_netns,
    run,
    start_detached,
    stop_processes,
)
from iotfleet.lab.state import ProcessRef

NSPAWN_RUNTIME = Path("/run/systemd/nspawn")
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
# inotify instances one booted host uses (systemd, journald, logind, path units, services).
INOTIFY_PER_HOST = 24


@dataclass(frozen=True)
class SshAccess:
    """How the lab logs in to its hosts (key never printed)."""

    key: Path
    known_hosts: Path

    def argv(self, address: str, command: str, connect_timeout: int = 3) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-o",
            "LogLevel=ERROR",
            f"root@{address}",
            command,
        ]


@dataclass(frozen=True)
class BootResult:
    process: ProcessRef
    system_state: str  # "running", or "degraded (failed: UNITS)"
    attempts: int


def ensure_nspawn_runtime() -> None:
    """nspawn cleans /run/systemd/nspawn/propagate/NAME only on a tmpfs; provide one.

    Shared by all labs and left in place by ``down`` (it holds nothing once labs are down).
    """
    NSPAWN_RUNTIME.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(NSPAWN_RUNTIME):
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs", str(NSPAWN_RUNTIME)])


def inotify_instances_needed(hosts: int, current: int) -> int | None:
    """The new fs.inotify.max_user_instances for ``hosts`` booted hosts, None if enough.

    Every host's systemd runs as root, and the limit counts per user across the machine:
    with Debian's default (128) about 1 of 20 parallel boots came up "degraded" because
    systemd-ask-password-*.path got "Too many open files". Only ever raised, never lowered.
    """
    wanted = 128 + INOTIFY_PER_HOST * hosts
    return wanted if wanted > current else None


def ensure_inotify_instances(hosts: int, knob: Path = INOTIFY_INSTANCES) -> None:
    current = int(knob.read_text().strip())
    wanted = inotify_instances_needed(hosts, current)
    if wanted is not None:
        knob.write_text(f"{wanted}\n")


def mount_overlay(lower: Path, host_dir: Path) -> Path:
    """Mount the host's root: shared base below, the host's own ``upper`` above."""
    upper, work, root = host_dir / "upper", host_dir / "work", host_dir / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}",
                str(root),
            ],
            timeout=30,
        )
    return root


def unmount(path: Path) -> None:
    """Unmount ``path`` if mounted; lazily if busy, so ``down`` never stops half-way."""
    if not os.path.ismount(path):
        return
    if run(["umount", str(path)], timeout=30, check=False).returncode != 0:
        run(["umount", "-l", str(path)], timeout=30, check=False)


def nspawn_argv(root: Path, machine: str, hostname: str, netns: str) -> list[str]:
    return [
        "systemd-nspawn",
        f"--directory={root}",
        f"--machine={machine}",
        f"--hostname={hostname}",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path={NETNS_DIR / netns}",
        # A real server manages its own firewall (nftables) and links.
        "--capability=CAP_NET_ADMIN",
        "--console=read-only",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
    ]


def start_host(root: Path, machine: str, hostname: str, netns: str, log: Path) -> ProcessRef:
    return start_detached(nspawn_argv(root, machine, hostname, netns), log)


def wait_ready(process: ProcessRef, address: str, ssh: SshAccess, deadline: float) -> str | None:
    """Wait until sshd answers and systemd finished booting; the system state, or ``None``
    if the host missed ``deadline`` (a monotonic time) or its nspawn process ended."""
    while True:
        if not is_alive(process):
            return None
        banner = tcp_banner(address, 22, timeout=0.5)
        if banner and banner.startswith(b"SSH-"):
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    remaining = deadline - time.monotonic()
    if remaining <= 1:
        remaining = 1
    result = run(
        ssh.argv(address, "timeout 60 systemctl is-system-running --wait"),
        timeout=remaining + 5,
        check=False,
    )
    state = (result.stdout.strip().splitlines()[-1:] or [""])[0]
    if state == "degraded":
        return _retry_failed_units(address, ssh)
    return state if state == "running" else None


def _retry_failed_units(address: str, ssh: SshAccess) -> str:
    """Start once more the units that failed while many hosts booted at once.

    Seen here with 20-30 parallel boots: a unit fails with status=219/CGROUP or "Failed to
    kill control group ... Input/output error" (the machine's cgroup layer under load); the
    same unit started again succeeds. A unit failing twice is reported as it is.
    """
    failed = _failed_units(address, ssh)
    if failed:
        units = " ".join(failed)
        run(
            ssh.argv(address, f"systemctl reset-failed {units}; systemctl restart {units}"),
            timeout=60,
            check=False,
        )
    result = run(ssh.argv(address, "systemctl is-system-running"), timeout=15, check=False)
    state = (result.stdout.strip().splitlines()[-1:] or [""])[0]
    if state == "running":
        return f"running (restarted {', '.join(failed)})" if failed else "running"
    return f"degraded (failed: {', '.join(_failed_units(address, ssh)) or 'unknown'})"


def _failed_units(address: str, ssh: SshAccess) -> list[str]:
    out = run(
        ssh.argv(address, "systemctl --failed --no-legend --plain"), timeout=15, check=False
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def stop_host_process(process: ProcessRef | None, netns: str, timeout: float = 10.0) -> None:
    """Stop the host (SIGTERM: nspawn asks systemd for a clean poweroff), then anything left
    in its namespace (the lab's own processes, found by namespace, killed by PID)."""
    stop_processes([process] if process else [], timeout=timeout)
    kill_pids(pids_in_netns(NETNS_DIR / netns))


def boot_host(
    root: Path,
    machine: str,
    hostname: str,
    netns: str,
    address: str,
    ssh: SshAccess,
    log: Path,
    boot_timeout: float,
    attempts: int = 3,
    on_start: Callable[[ProcessRef | None], None] | None = None,
) -> BootResult:
    """Boot and wait; restart a host whose boot stalls (seen: 1 of 20 parallel boots hung).

    ``on_start`` gets each new process at once (and ``None`` once it is stopped), so that the
    caller records the PID before waiting: a crash while waiting leaves nothing unrecorded.
    """
    for attempt in range(1, attempts + 1):
        process = start_host(root, machine, hostname, netns, log)
        if on_start:
            on_start(process)
        state = wait_ready(process, address, ssh, time.monotonic() + boot_timeout)
        if state is not None:
            return BootResult(process, state, attempt)
        stop_host_process(process, netns, timeout=5)
        if on_start:
            on_start(None)
    raise LabError(
        f"{hostname} did not boot within {boot_timeout:.0f} s, {attempts} times "
        f"(sshd answering and systemd up); see its console log {log}"
    )
