"""Faults an operator meets, injected into lab hosts: power loss, reboot, a process caught mid-way.

A lab host is a systemd-nspawn container: its init (the container's PID 1) is a child of the
nspawn process the lab records. SIGKILL to that init takes the whole host down at once, as a
power cut does (killing nspawn itself would leave the container's processes running).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import time
from pathlib import Path

from iotfleet.lab.state import HostState, lab_paths, load_state
from tests.integration.conftest import LabHost, RunningLab, lab_up
from tests.support.waiting import wait_until

# What iotfleet manages on a broker: compared before a fault and after the run that recovers.
MANAGED_PATHS = (
    "/etc/mosquitto",
    "/etc/iotfleet",
    "/usr/local/lib/iotfleet",
    "/etc/systemd/system/mosquitto.service.d",
    "/etc/systemd/system/iotfleet-firewall.service",
    "/etc/ssh/sshd_config.d/00-iotfleet-hardening.conf",
)


def lab_host_state(lab: RunningLab, host: LabHost) -> HostState:
    state = load_state(lab_paths(lab.name).state_file)
    assert state is not None
    return next(h for h in state.hosts if h.name == host.name)


def init_pid(lab: RunningLab, host: LabHost) -> int:
    """PID (on this machine) of the host's init, the child of its nspawn process."""
    process = lab_host_state(lab, host).process
    assert process is not None, f"{host.name} is not running"
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert children, f"{host.name}: its nspawn process has no child"
    return int(children[0])


def power_off(lab: RunningLab, host: LabHost) -> None:
    """Cut the host's power: every process of it dies at once, no shutdown runs."""
    pid = init_pid(lab, host)
    os.kill(pid, signal.SIGKILL)

    def host_is_gone() -> bool:
        """the host's init is gone"""
        return not Path(f"/proc/{pid}").exists()

    wait_until(host_is_gone, timeout=60)


def shut_down(lab: RunningLab, host: LabHost) -> None:
    """A clean poweroff from inside the host (units stopped, disks synced)."""
    pid = init_pid(lab, host)
    lab.ssh(host, "systemctl poweroff", check=False, timeout=30)

    def host_is_down() -> bool:
        """the host finished its shutdown"""
        return not Path(f"/proc/{pid}").exists()

    wait_until(host_is_down, timeout=120)


def boot_again(lab: RunningLab) -> float:
    """``iotfleet lab up`` restarts the hosts that are down; returns the seconds it took."""
    started = time.monotonic()
    lab_up(lab.name, lab.suite, len(lab.hosts), len(lab.gateways))  # the same size: nothing goes
    return time.monotonic() - started


def netns_inode(lab: RunningLab, host: LabHost) -> int:
    return os.stat(f"/run/netns/{lab_host_state(lab, host).netns}").st_ino


def processes_in(netns_ino: int, needle: bytes) -> list[int]:
    """PIDs of processes of one lab host (by network namespace) whose command line holds
    ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino != netns_ino:
                continue
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:  # the process ended meanwhile
            continue
    return found


def managed_state(lab: RunningLab, host: LabHost) -> str:
    """Owner, group, mode and SHA-256 of every file iotfleet manages on ``host``."""
    paths = " ".join(MANAGED_PATHS)
    return lab.ssh(
        host,
        f"find {paths} -type f 2>/dev/null | sort | while read -r f; do "
        'printf "%s %s %s\\n" "$(stat -c "%U:%G %a" "$f")" "$(sha256sum <"$f" | cut -c1-16)" '
        '"$f"; done',
    ).stdout


def tcp_connects(address: str, port: int, timeout: float = 3) -> bool:
    """Whether a TCP connection from this machine to ``address:port`` is accepted (a dropped
    SYN times out, a closed port is refused: both are False)."""
    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except OSError:
        return False
    return True


# Runs on a lab host (its own python3): `dpkg --unpack DEB`, SIGKILLed as soon as dpkg has
# journalled a change (a numbered entry in its updates directory: what apt reads as "dpkg was
# interrupted"), as a power cut or an OOM kill leaves it. A
# dpkg that finishes first is undone and started again (a small package unpacks in
# milliseconds; the journal stays until dpkg ends, so a spinning watcher catches it).
_INTERRUPT_DPKG = r"""
import os, signal, subprocess, sys
deb, package = sys.argv[1], sys.argv[2]
updates = "/var/lib/dpkg/updates"
assert not os.listdir(updates), "dpkg was already interrupted"
for attempt in range(20):
    dpkg = subprocess.Popen(["dpkg", "--unpack", deb], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while dpkg.poll() is None:
        if any(name.isdigit() for name in os.listdir(updates)):  # not only its tmp.i
            os.kill(dpkg.pid, signal.SIGKILL)
            dpkg.wait()
            print("interrupted after", attempt + 1, "attempt(s)")
            sys.exit(0)
    subprocess.run(["dpkg", "--purge", package], stdout=subprocess.DEVNULL, check=True)
sys.exit("dpkg --unpack always finished before it could be interrupted")
"""


def interrupt_dpkg(lab: RunningLab, host: LabHost, package: str) -> str:
    """Leave ``host``'s dpkg interrupted in the middle of unpacking ``package`` (removed first;
    its .deb comes from the host's own apt source)."""
    encoded = base64.b64encode(_INTERRUPT_DPKG.encode()).decode()
    return lab.ssh(
        host,
        f"DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq {package} >/dev/null && "
        f'cd "$(mktemp -d)" && apt-get download -qq {package} && '
        f"echo {encoded} | base64 -d >interrupt.py && python3 interrupt.py ./{package}_*.deb "
        f'{package}; status=$?; rm -rf "$PWD"; exit $status',
        timeout=300,
    ).stdout
