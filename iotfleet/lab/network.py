"""The lab's network: one bridge per lab on the control machine, one namespace per host.

Each host gets a network namespace with a veth pair: ``eth0`` inside (its lab address), the
other end on the lab's bridge. The bridge holds the control machine's address in the lab's
/24 (the package source listens there). Hosts get no default route: they reach only the lab.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

from iotfleet.lab.procs import run

NETNS_DIR = Path("/run/netns")
MAX_SLOT = 240  # host addresses are .11 .. .250 of the lab's /24


def host_address(subnet: str, slot: int) -> str:
    return str(ipaddress.IPv4Network(subnet)[10 + slot])


def bridge_address(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet)[1])


def route_table() -> str:
    """The control machine's IPv4 main routing table, as `ip -4 route show` prints it."""
    return run(["ip", "-4", "route", "show"], timeout=10).stdout


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], timeout=10, check=False).returncode == 0


def link_names() -> list[str]:
    out = run(["ip", "-j", "link", "show"], timeout=10).stdout
    return [entry["ifname"] for entry in json.loads(out or "[]")]


def netns_names() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def ensure_bridge(name: str, address: str, subnet: str) -> None:
    """Create the lab bridge holding ``address`` (idempotent)."""
    prefix = ipaddress.ip_network(subnet).prefixlen
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"], timeout=10)
    current = run(["ip", "-j", "-4", "addr", "show", "dev", name], timeout=10).stdout
    addresses = {
        info["local"]
        for entry in json.loads(current or "[]")
        for info in entry.get("addr_info", [])
    }
    if address not in addresses:
        run(["ip", "addr", "add", f"{address}/{prefix}", "dev", name], timeout=10)
    run(["ip", "link", "set", name, "up"], timeout=10)


def create_host_network(netns: str, veth: str, bridge: str, address: str, subnet: str) -> None:
    """Namespace + veth pair for one host, in few `ip -batch` calls (fast for many hosts)."""
    prefix = ipaddress.ip_network(subnet).prefixlen
    delete_host_network(netns, veth)  # a leftover of a crashed run must not block us
    run(["ip", "netns", "add", netns], timeout=10)
    outside = [
        f"link add {veth} type veth peer name eth0 netns {netns}",
        f"link set {veth} master {bridge} up",
    ]
    inside = [
        f"addr add {address}/{prefix} dev eth0",
        "link set eth0 up",
        "link set lo up",
    ]
    run(["ip", "-batch", "-"], timeout=20, input_text="\n".join(outside) + "\n")
    run(["ip", "-n", netns, "-batch", "-"], timeout=20, input_text="\n".join(inside) + "\n")


def delete_host_network(netns: str, veth: str) -> None:
    """Remove a host's veth pair and namespace; missing pieces are fine (safe twice)."""
    if link_exists(veth):
        run(["ip", "link", "del", veth], timeout=10, check=False)
    if (NETNS_DIR / netns).exists():
        run(["ip", "netns", "del", netns], timeout=10, check=False)


def delete_link(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "del", name], timeout=10, check=False)


def tcp_banner(address: str, port: int, timeout: float) -> bytes | None:
    """The first bytes a TCP server sends (an SSH banner), or ``None`` if it does not answer."""

    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64)
    except OSError:
        return None


def port_accepts(address: str, port: int, timeout: float) -> bool:

    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
