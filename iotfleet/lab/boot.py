"""Boot, wait for and stop one lab host: an overlay root booted by systemd-nspawn.

systemd runs as the host's PID 1. Without a systemd on the control machine, nspawn needs
``--register=no --keep-unit`` and a tmpfs on /run/systemd/nspawn (see docs/lab.md).
"""

from __future__ import annotations

import os
import time
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
    system_state: str  # what `systemctl is-system-running` said
    attempts: int


def ensure_nspawn_runtime() -> None:
    """nspawn cleans /run/systemd/nspawn/propagate/NAME only on a tmpfs; provide one.

    Shared by all labs and left in place by ``down`` (it holds nothing once labs are down).
    """
    NSPAWN_RUNTIME.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(NSPAWN_RUNTIME):
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs", str(NSPAWN_RUNTIME)])


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


def wait_ready(
    process: ProcessRef, address: str, ssh: SshAccess, deadline: float
) -> str | None:
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
    state = result.stdout.strip().splitlines()[-1:] or [""]
    if state[0] in {"running", "degraded"}:
        return state[0]
    return None


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
) -> BootResult:
    """Boot and wait; restart a host whose boot stalls (seen: 1 of 20 parallel boots hung)."""
    for attempt in range(1, attempts + 1):
        process = start_host(root, machine, hostname, netns, log)
        state = wait_ready(process, address, ssh, time.monotonic() + boot_timeout)
        if state is not None:
            return BootResult(process, state, attempt)
        stop_host_process(process, netns, timeout=5)
    raise LabError(
        f"{hostname} did not boot within {boot_timeout:.0f} s, {attempts} times "
        f"(sshd answering and systemd up); see its console log {log}"
    )
