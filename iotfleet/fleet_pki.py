"""The fleet's PKI as the inventory asks for it: identities to hold and engine settings."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from iotfleet.atomic import write_file_atomically
from iotfleet.health import health_identity_name
from iotfleet.model import Broker, Fleet
from iotfleet.model.names import is_dns_name
from iotfleet.pki import IdentitySpec, PkiSettings, PkiStore, ReconcileReport, reconcile
from iotfleet.pki.testing import make_expired_identity
from iotfleet.probes import DELIVERY_IDENTITY, PROBE_DEVICES


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
    specs.extend(IdentitySpec(name=probe, kind="device") for probe in PROBE_DEVICES)
    specs.append(IdentitySpec(name=DELIVERY_IDENTITY, kind="client"))
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
        renew_same_key=config.device_renew_same_key,
    )


# Canaries give the compliance checks certificates that brokers must refuse, without needing
# the CA passphrase at check time: one issued by the fleet CA and then revoked (it is in every
# CRL), one signed by the fleet CA that has already expired.
REVOKED_CANARY = "iotfleet-canary-revoked"
EXPIRED_CANARY = "iotfleet-canary-expired"


@dataclass(frozen=True)
class Canary:
    name: str
    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)


def canary_dir(state_dir: Path) -> Path:
    return state_dir / "canaries"


def load_canary(state_dir: Path, name: str) -> Canary:
    """A canary identity kept beside the PKI (raises FileNotFoundError before the first rollout)."""
    directory = canary_dir(state_dir)
    return Canary(
        name, (directory / f"{name}.pem").read_bytes(), (directory / f"{name}.key").read_bytes()
    )


def _save_canary(state_dir: Path, name: str, certificate_pem: bytes, key_pem: bytes) -> None:
    directory = canary_dir(state_dir)
    write_file_atomically(directory / f"{name}.key", key_pem, mode=0o600)
    write_file_atomically(directory / f"{name}.pem", certificate_pem, mode=0o600)


def reconcile_fleet(
    fleet: Fleet, settings: PkiSettings, state_dir: Path, *, now: datetime | None = None
) -> ReconcileReport:
    """Reconcile the PKI with the fleet, canaries included (needs the CA passphrase).

    ``now``: the time to act at (default: the clock); tests move time with it.
    """
    specs = fleet_identities(fleet)
    directory = canary_dir(state_dir)
    first: ReconcileReport | None = None
    if not (directory / f"{REVOKED_CANARY}.pem").exists():
        # Issue the canary, keep a copy of it, then revoke it in the same run.
        first = reconcile(settings, [*specs, IdentitySpec(REVOKED_CANARY, "client")], now=now)
        store = PkiStore(settings.state_dir)
        _save_canary(
            state_dir,
            REVOKED_CANARY,
            store.certificate_pem(REVOKED_CANARY),
            store.private_key_pem(REVOKED_CANARY),
        )
    report = reconcile(
        settings,
        [*specs, IdentitySpec(REVOKED_CANARY, "client", revoked_reason="cessationOfOperation")],
        now=now,
    )
    if not (directory / f"{EXPIRED_CANARY}.pem").exists():
        expired = make_expired_identity(settings, EXPIRED_CANARY, kind="client")
        _save_canary(state_dir, EXPIRED_CANARY, expired.certificate_pem, expired.private_key_pem)
    return report if first is None else _combined(first, report)


def _combined(first: ReconcileReport, second: ReconcileReport) -> ReconcileReport:
    """One report for two reconciles of the same run (canary issued, then revoked)."""
    return replace(
        second,
        issued=tuple(n for n in first.issued if n != REVOKED_CANARY) + second.issued,
        renewed=first.renewed + second.renewed,
        renewed_same_key=first.renewed_same_key + second.renewed_same_key,
        retired=first.retired + second.retired,
        revoked=first.revoked + tuple(n for n in second.revoked if n != REVOKED_CANARY),
        crl_changed=first.crl_changed or second.crl_changed,
        root_crl_changed=first.root_crl_changed or second.root_crl_changed,
        ca_created=first.ca_created or second.ca_created,
        intermediate_renewed=first.intermediate_renewed or second.intermediate_renewed,
        warnings=first.warnings + second.warnings,
    )
