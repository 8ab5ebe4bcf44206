"""The fleet's PKI as the inventory asks for it: identities to hold and engine settings."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from iotfleet.health import health_identity_name
from iotfleet.model import Broker, Fleet
from iotfleet.model.names import is_dns_name
from iotfleet.pki import IdentitySpec, PkiSettings


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


def fleet_identities(fleet: Fleet) -> list[IdentitySpec]:
    """Every identity the inventory asks for, revoked ones marked with their reason."""
    specs: list[IdentitySpec] = []
    for broker in fleet.brokers:
        specs.append(
            IdentitySpec(
                name=broker.name,
                kind="broker",
                dns_names=tuple(broker_dns_names(broker)),
                ip_addresses=tuple(broker_ip_addresses(broker)),
            )
        )
        specs.append(IdentitySpec(name=health_identity_name(broker.name), kind="client"))
    for device in fleet.devices:
        specs.append(
            IdentitySpec(
                name=device.id,
                kind="device",
                key_type=device.key_type,
                revoked_reason=device.revoked,
            )
        )
    for client in fleet.clients:
        if client.has_certificate:
            specs.append(
                IdentitySpec(
                    name=client.name,
                    kind="client",
                    key_type=client.key_type,
                    revoked_reason=client.revoked,
                )
            )
    return specs


def pki_settings_for(fleet: Fleet, state_dir: Path) -> PkiSettings:
    """The PKI engine's settings from the inventory's ``pki_*`` keys."""
    config = fleet.pki
    return PkiSettings(
        state_dir=config.state_dir or state_dir / "pki",
        passphrase_env=config.passphrase_env,
        passphrase_file=config.passphrase_file,
        ca_name=config.ca_name,
        renew_before_days=config.renew_before_days,
        broker_days=config.broker_days,
        device_days=config.device_days,
        client_days=config.client_days,
        crl_days=config.crl_days,
        crl_refresh_before_days=config.crl_refresh_before_days,
    )
