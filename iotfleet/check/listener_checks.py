"""Judge where the broker listens (open sockets, configured listeners) against the inventory."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from iotfleet.check.host_facts import ListeningSocket
from iotfleet.model import Broker
from iotfleet.mosquitto.conf import WILDCARD_ADDRESSES, MosquittoConfig


def _is_wildcard(address: str) -> bool:
    return address in WILDCARD_ADDRESSES


def _same_address(actual: str, configured: str) -> bool:
    try:
        return ipaddress.ip_address(actual) == ipaddress.ip_address(configured)
    except ValueError:
        return actual == configured


def socket_problems(host: str, broker: Broker, sockets: Iterable[ListeningSocket]) -> list[str]:
    """The broker listens exactly where the inventory says: nothing more, nothing less."""
    wanted = {listener.port: listener for listener in broker.mosquitto.listeners}
    mosquitto_sockets = [s for s in sockets if any(name == "mosquitto" for name, _ in s.processes)]
    problems = []
    for sock in mosquitto_sockets:
        listener = wanted.get(sock.port)
        if listener is None:
            problems.append(
                f"Mosquitto listens on {sock.where} on {host}, which the inventory does not list"
            )
        elif listener.bind_address is None:
            if not _is_wildcard(sock.address):
                problems.append(
                    f"Mosquitto listens on {sock.where} on {host}; the inventory expects every "
                    f"address for port {sock.port}"
                )
        elif not _same_address(sock.address, listener.bind_address):
            problems.append(
                f"Mosquitto listens on {sock.where} on {host}; the inventory binds port "
                f"{sock.port} to {listener.bind_address}"
            )
    listening_ports = {s.port for s in mosquitto_sockets}
    for port in sorted(set(wanted) - listening_ports):
        problems.append(f"Mosquitto does not listen on port {port} on {host} (in the inventory)")
    return problems


def plain_listener_problems(
    host: str, config: MosquittoConfig, sockets: Iterable[ListeningSocket]
) -> list[str]:
    """No MQTT without TLS on an address other hosts can reach."""
    problems = []
    for listener in config.listeners:
        if not listener.tls and not listener.loopback:
            problems.append(
                f"plain MQTT (no TLS) on {listener.where} on {host}: credentials and messages "
                "travel in clear text"
            )
    tls_ports = {lst.port for lst in config.listeners if lst.tls}
    reported = {lst.port for lst in config.listeners if not lst.tls and not lst.loopback}
    for sock in sockets:
        if not any(name == "mosquitto" for name, _ in sock.processes) or sock.loopback:
            continue
        if sock.port not in tls_ports and sock.port not in reported:
            reported.add(sock.port)
            problems.append(
                f"plain MQTT (no TLS) on {sock.where} on {host}: the running broker's "
                "configuration has no TLS listener on that port"
            )
    return problems


def configured_listener_problems(host: str, broker: Broker, config: MosquittoConfig) -> list[str]:
    """Listener blocks in the configuration match the inventory's listeners."""
    problems = []
    for configured in config.listeners:
        if not any(lst.port == configured.port for lst in broker.mosquitto.listeners):
            problems.append(
                f"the configuration on {host} has a listener on {configured.where} that the "
                "inventory does not list"
            )
    for listener in broker.mosquitto.listeners:
        configured_listener = config.listener(listener.port)
        if configured_listener is None:
            problems.append(f"the configuration on {host} has no listener on port {listener.port}")
            continue
        if (configured_listener.bind_address or None) != listener.bind_address:
            problems.append(
                f"listener {listener.port} on {host} binds {configured_listener.where}, "
                f"the inventory says {listener.bind_address or 'every address'}"
            )
        protocol = config.effective(configured_listener, "protocol")
        if protocol != listener.protocol:
            problems.append(
                f"listener {listener.port} on {host} speaks {protocol}, the inventory says "
                f"{listener.protocol}"
            )
    return problems
