"""What the lab takes from the control machine: state root, /etc/hosts, euid, tools, mirror,
the board emulator and the machine-wide locks. Tests pass their own."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iotfleet.fleet.paths import state_root
from iotfleet.lab import network
from iotfleet.lab.gateways import emulator_argv
from iotfleet.lab.hostsfile import ETC_HOSTS
from iotfleet.lab.mirror import machine_mirror


@dataclass
class Environment:
    """What the lab takes from the machine; tests pass their own."""

    root: Path = field(default_factory=state_root)
    hosts_file: Path = ETC_HOSTS
    euid: int = field(default_factory=os.geteuid)
    path: str | None = None  # $PATH for the tool check
    route_text: Callable[[], str] = network.route_table
    mirror: Callable[[], str] = machine_mirror
    find_spec: Callable[[str], object | None] | None = None
    # argv of one emulated board (port, flash file, MAC); tests pass a stand-in server
    emulator_argv: Callable[[int, str, str], list[str]] = emulator_argv

    @property
    def hosts_lock(self) -> Path:
        return self._machine_lock_dir / "iotfleet-etc-hosts.lock"

    @property
    def network_lock(self) -> Path:
        """Held while a new lab picks its subnet and makes its bridge (labs start at once)."""
        return self._machine_lock_dir / "iotfleet-lab-network.lock"

    @property
    def _machine_lock_dir(self) -> Path:
        # Machine-wide (not per IOTFLEET_HOME): the kernel's routes and /etc/hosts are shared.
        shared = Path("/run/lock")
        return shared if shared.is_dir() else self.root
