"""What ``iotfleet lab up`` was asked for, and the hosts and boards that means."""

from __future__ import annotations

from dataclasses import dataclass

from iotfleet.lab import naming, packages


@dataclass(frozen=True)
class NamedGateway:
    name: str
    mac: str


@dataclass(frozen=True)
class UpRequest:
    """What ``iotfleet lab up`` was asked for."""

    name: str
    brokers: int = 1
    gateways: int = 0
    # Boards named (and with MACs) as given instead of gw1..gwN: a classroom names them after
    # its devices.
    named_gateways: tuple[NamedGateway, ...] = ()
    # Host names instead of broker1..brokerN (a classroom gives each student a broker).
    host_names: tuple[str, ...] = ()
    # Extra software devices of the lab fleet (dev000001..): identities, ACL and password
    # entries only, no boards (bench/scale.py grows a fleet with them).
    devices: int = 0
    suite: str = packages.DEFAULT_SUITE
    subnet: str | None = None
    install_missing: bool = False
    boot_timeout: float | None = None  # per host; default grows with the hosts booting at once


def wanted_hosts(request: UpRequest) -> list[str]:
    """Host names the lab should have: as given, else broker1..brokerN."""
    if request.host_names:
        return list(request.host_names)
    return [naming.broker_name(i) for i in range(1, request.brokers + 1)]


def wanted_gateways(request: UpRequest) -> dict[str, str]:
    """``{name: MAC}`` of the boards the lab should have: as given, else gw1..gwN."""
    if request.named_gateways:
        return {gw.name: gw.mac for gw in request.named_gateways}
    names = [naming.gateway_name(i) for i in range(1, request.gateways + 1)]
    return {name: naming.gateway_mac(request.name, name) for name in names}
