"""The names and addresses clients use for a broker: its certificate's SANs, the host the
gateways and the checks connect to."""

from __future__ import annotations

import ipaddress

from iotfleet.model.fleet import Broker
from iotfleet.model.names import is_dns_name


def broker_dns_names(broker: Broker) -> list[str]:
    """Names clients use for ``broker`` (certificate SAN DNS entries)."""
    if broker.mosquitto.dns_names is not None:
        return list(broker.mosquitto.dns_names)
    return [broker.name.lower()] if is_dns_name(broker.name) else []


def broker_ip_addresses(broker: Broker) -> list[str]:
    """Addresses clients use for ``broker`` (certificate SAN IP entries)."""
    if broker.mosquitto.ip_addresses is not None:
        return list(broker.mosquitto.ip_addresses)
    try:
        return [str(ipaddress.ip_address(broker.ssh_hostname))]
    except ValueError:
        return []
