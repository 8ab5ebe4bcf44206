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
from fnmatch import fnmatch
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


def limited_brokers(
    fleet: Fleet, groups_of: Mapping[str, Sequence[str]], limit: Iterable[str] = ()
) -> list[Broker]:
    """The brokers ``limit`` selects, as pyinfra's ``--limit`` does: a group name selects that
    group's hosts, anything else is a host name or glob (``mqtt*``). No limit: every broker.

    Raises ``PlanError`` naming every pattern that selects no broker.
    """
    patterns = list(limit)
    if not patterns:
        return list(fleet.brokers)
    groups = {group for names in groups_of.values() for group in names}
    selected: set[str] = set()
    unknown = []
    for pattern in patterns:
        if pattern in groups:
            hits = {name for name, names in groups_of.items() if pattern in names}
        else:
            hits = {name for name in groups_of if fnmatch(name, pattern)}
        brokers = {broker.name for broker in fleet.brokers} & hits
        if not brokers:
            unknown.append(pattern)
        selected |= brokers
    if unknown:
        known = sorted(broker.name for broker in fleet.brokers)
        raise PlanError(
            f"--limit {', '.join(unknown)}: selects no broker of this inventory (a host name, "
            f"glob or group; brokers: {', '.join(known) or 'none'})"
        )
    return [broker for broker in fleet.brokers if broker.name in selected]


def plan_for(
    fleet: Fleet,
    host_data: Mapping[str, Mapping[str, Any]],
    limit: Iterable[str] = (),
    groups_of: Mapping[str, Sequence[str]] | None = None,
) -> CheckPlan:
    """The brokers to check (all, or those ``limit`` selects) with their SSH endpoints.

    ``groups_of`` maps each host to its inventory groups (default: ``brokers`` for brokers).
    """
    if groups_of is None:
        groups_of = {broker.name: ("brokers",) for broker in fleet.brokers}
    brokers = limited_brokers(fleet, groups_of, limit)
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
    groups_of = {h.name: tuple(h.groups) for h in hosts}
    return plan_for(fleet, {h.name: h.data for h in hosts}, limit, groups_of)


def load_plan(inventory_path: str | Path, limit: Iterable[str] = ()) -> CheckPlan:
    """Load and validate the inventory (raises ``InventoryError``, ``PlanError``)."""
    return plan_from_hosts(read_inventory(inventory_path), limit)
