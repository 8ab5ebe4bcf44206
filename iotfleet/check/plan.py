"""What the compliance suite checks: the fleet's brokers, how to reach them, their listeners.

Read from the same pyinfra inventory as the rollout, so the suite connects with the rollout's
SSH settings (host, user, key, port, known_hosts, host key checking) and expects what the
rollout was asked to make.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotfleet.model import Broker, Fleet, Listener, RawHost, build_fleet
from iotfleet.model.addresses import broker_dns_names, broker_ip_addresses
from iotfleet.model.ssh import SshEndpoint, SshEndpointError, ssh_endpoint


class PlanError(Exception):
    """The inventory cannot be checked as asked (no brokers, unknown --limit, no SSH...)."""


@dataclass(frozen=True)
class ListenerTarget:
    """One listener of one broker, as clients reach it."""

    broker: str
    connect_name: str
    listener: Listener

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def id(self) -> str:
        """``host:port``: how test ids and messages name the listener."""
        return f"{self.broker}:{self.listener.port}"

    @property
    def reachable(self) -> bool:
        """Whether clients elsewhere can reach it (loopback listeners are checked inside)."""
        bind = self.listener.bind_address
        return bind is None or not ipaddress.ip_address(bind).is_loopback

    @property
    def websockets(self) -> bool:
        return self.listener.protocol == "websockets"


@dataclass(frozen=True)
class BrokerTarget:
    """A broker host: its model, SSH endpoint and the names clients use for it."""

    model: Broker  # the validated inventory entry
    ssh: SshEndpoint
    client_names: tuple[str, ...]  # certificate SANs: DNS names, then IP addresses
    connect_name: str  # the one the outside probes use (and verify the certificate for)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def listeners(self) -> list[ListenerTarget]:
        return [
            ListenerTarget(self.name, self.connect_name, listener)
            for listener in self.model.mosquitto.listeners
        ]


@dataclass(frozen=True)
class CheckPlan:
    fleet: Fleet
    brokers: tuple[BrokerTarget, ...]

    def broker(self, name: str) -> BrokerTarget:
        for target in self.brokers:
            if target.name == name:
                return target
        raise KeyError(name)


def _endpoint(host_name: str, data: Mapping[str, Any]) -> SshEndpoint:
    try:
        return ssh_endpoint(host_name, data)
    except SshEndpointError as exc:
        raise PlanError(str(exc)) from None


def _resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    return True


def client_names(broker: Broker) -> tuple[str, ...]:
    """Names clients use for the broker: the SANs its certificate must carry."""
    return (*broker_dns_names(broker), *broker_ip_addresses(broker))


def connect_name(broker: Broker, names: Iterable[str]) -> str:
    """The name probes connect to: the first DNS name that resolves here, else an address.

    Probes verify the broker's certificate for this very name, as a client would.
    """
    candidates = list(names)
    dns = [n for n in candidates if not _is_ip(n)]
    for name in dns:
        if _resolves(name):
            return name
    addresses = [n for n in candidates if _is_ip(n)]
    if addresses:
        return addresses[0]
    return dns[0] if dns else broker.ssh_hostname


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def plan_for(
    fleet: Fleet, host_data: Mapping[str, Mapping[str, Any]], limit: Iterable[str] = ()
) -> CheckPlan:
    """The brokers to check (all, or those named in ``limit``) with their SSH endpoints."""
    wanted = list(limit)
    known = {broker.name for broker in fleet.brokers}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise PlanError(
            f"--limit {', '.join(unknown)}: not a broker of this inventory "
            f"(brokers: {', '.join(sorted(known)) or 'none'})"
        )
    brokers = [b for b in fleet.brokers if not wanted or b.name in wanted]
    if not brokers:
        raise PlanError("the inventory has no hosts in the 'brokers' group: nothing to check")
    targets = []
    for broker in brokers:
        names = client_names(broker)
        targets.append(
            BrokerTarget(
                model=broker,
                ssh=_endpoint(broker.name, host_data.get(broker.name, {})),
                client_names=names,
                connect_name=connect_name(broker, names),
            )
        )
    return CheckPlan(fleet, tuple(targets))


def read_inventory(inventory_path: str | Path, timeout: float = 120) -> list[RawHost]:
    """The inventory's hosts, loaded in a child process (see ``inventory_dump``).

    Raises ``PlanError`` with the loader's own message when the file cannot be loaded.
    """
    path = Path(inventory_path)
    if not path.is_file():
        raise PlanError(f"inventory file {path} does not exist")
    result = subprocess.run(
        [sys.executable, "-m", "iotfleet.check.inventory_dump", str(path.resolve())],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()
        raise PlanError(
            f"cannot load inventory {path}: {message[-1] if message else 'loader failed'}"
        )
    return [
        RawHost(name=h["name"], groups=tuple(h["groups"]), data=h["data"])
        for h in json.loads(result.stdout)
    ]


def plan_from_hosts(hosts: Sequence[RawHost], limit: Iterable[str] = ()) -> CheckPlan:
    """Validate the hosts into the fleet (raises ``InventoryError``) and plan the checks."""
    fleet = build_fleet(hosts)
    return plan_for(fleet, {h.name: h.data for h in hosts}, limit)


def load_plan(inventory_path: str | Path, limit: Iterable[str] = ()) -> CheckPlan:
    """Load and validate the inventory (raises ``InventoryError``, ``PlanError``)."""
    return plan_from_hosts(read_inventory(inventory_path), limit)
