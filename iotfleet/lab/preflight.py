"""Checks made before ``lab up`` creates anything. Inputs are parameters, so each is testable.

Each check raises ``LabError`` with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from iotfleet.lab.base import BUILD_BYTES
from iotfleet.lab.errors import LabError

# binary -> Debian package providing it
REQUIRED_TOOLS: dict[str, str] = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "apt-ftparchive": "apt-utils",
    "ssh": "openssh-client",
    "mount": "mount",
    "chroot": "coreutils",
}

# The lab takes the first of these /24s that no route on the machine overlaps.
SUBNET_CANDIDATES: tuple[str, ...] = tuple(f"10.{n}.0.0/24" for n in range(213, 224))

EMULATOR_MODULE = "iotfleet.emulator"

# Disk one more host needs: its upper layer (logs, keys, later packages) with headroom.
HOST_BYTES = 64 * 1024 * 1024


def check_root(euid: int) -> None:
    if euid != 0:
        raise LabError(
            "the lab needs root (it creates network namespaces, mounts and boots containers): "
            "run `sudo iotfleet lab ...` or as root"
        )


def missing_tools(path: str | None = None) -> dict[str, str]:
    """Required binaries not found on ``path`` (default: $PATH), with their packages."""
    return {
        tool: package
        for tool, package in REQUIRED_TOOLS.items()
        if shutil.which(tool, path=path) is None
    }


def install_command(packages: Iterable[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *sorted(set(packages))]


def check_tools(
    path: str | None = None,
    install: bool = False,
    installer: Callable[[Sequence[str]], None] | None = None,
) -> None:
    """Fail naming the exact install command, or install the packages when asked."""
    missing = missing_tools(path)
    if not missing:
        return
    command = install_command(missing.values())
    if not install or installer is None:
        raise LabError(
            f"missing {', '.join(sorted(missing))}: run `{' '.join(command)}` "
            "(or `iotfleet lab up --install-missing`)"
        )
    installer(command)
    still = missing_tools(path)
    if still:
        raise LabError(f"still missing after installing: {', '.join(sorted(still))}")


def routes(route_text: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    """(destination, route line) of each non-default route in `ip -4 route show` output."""
    found = []
    for line in route_text.splitlines():
        parts = line.split()
        if not parts:
            continue
        dest = parts[1] if parts[0] in {"unicast", "local", "broadcast", "blackhole"} else parts[0]
        if dest == "default":
            continue
        try:
            found.append((ipaddress.IPv4Network(dest, strict=False), line.strip()))
        except ValueError:
            continue
    return found


def choose_subnet(
    route_text: str,
    explicit: str | None = None,
    taken: Iterable[str] = (),
    candidates: Sequence[str] = SUBNET_CANDIDATES,
    own_bridge: str | None = None,
) -> ipaddress.IPv4Network:
    """The lab's /24: ``explicit`` if free (else an error naming the route), or the first free
    candidate. ``taken`` are subnets other labs recorded; routes via ``own_bridge`` are ours.
    """
    table = [
        (net, line)
        for net, line in routes(route_text)
        if own_bridge is None or f" dev {own_bridge}" not in f" {line} "
    ]
    other_labs = [ipaddress.IPv4Network(t) for t in taken]
    if explicit is not None:
        try:
            wanted = ipaddress.IPv4Network(explicit, strict=True)
        except ValueError as exc:
            raise LabError(f"--subnet {explicit!r} is not an IPv4 network: {exc}") from None
        if wanted.prefixlen > 24 or not wanted.is_private:
            raise LabError(f"--subnet {explicit}: use a private network of /24 or larger")
        for net, line in table:
            if net.overlaps(wanted):
                raise LabError(f"--subnet {explicit} collides with the route `{line}`")
        for net in other_labs:
            if net.overlaps(wanted):
                raise LabError(f"--subnet {explicit} is used by another iotfleet lab ({net})")
        return wanted
    for candidate in candidates:
        net = ipaddress.IPv4Network(candidate)
        if any(net.overlaps(r) for r, _ in table) or any(net.overlaps(t) for t in other_labs):
            continue
        return net
    raise LabError(
        f"every candidate lab subnet ({', '.join(candidates)}) collides with a route or "
        "another lab: pass a free one with --subnet"
    )


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(free: int, needed: int, where: Path) -> None:
    if free < needed:
        raise LabError(
            f"not enough disk space in {where}: the lab needs {_mib(needed)} MiB there, "
            f"{_mib(free)} MiB are free (set IOTFLEET_HOME to a roomier place)"
        )


def disk_needed(base_cached: bool, new_hosts: int) -> int:
    return (0 if base_cached else BUILD_BYTES) + new_hosts * HOST_BYTES


def check_emulator(
    gateways: int,
    find_spec: Callable[[str], object | None] = importlib.util.find_spec,
) -> None:
    if gateways > 0 and find_spec(EMULATOR_MODULE) is None:
        raise LabError(
            f"--gateways {gateways}: the ESP8266 emulator ({EMULATOR_MODULE}) is not installed "
            "in this iotfleet yet; run the lab with --gateways 0"
        )


def _mib(n: int) -> int:
    return (n + (1 << 20) - 1) >> 20
