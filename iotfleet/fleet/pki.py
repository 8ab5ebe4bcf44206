"""The fleet's PKI as the inventory asks for it: identities to hold and engine settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from iotfleet.fleet.secrets import SecretStore
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.model import Fleet
from iotfleet.model.addresses import broker_dns_names, broker_ip_addresses
from iotfleet.model.own_identities import (
    DELIVERY_IDENTITY,
    PROBE_DEVICES,
    bridge_identity_name,
    health_identity_name,
)
from iotfleet.pki import IdentitySpec, PkiSettings, ReconcileReport, reconcile
from iotfleet.pki.ca import CaCerts
from iotfleet.pki.certs import Issuer
from iotfleet.pki.testing import make_expired_identity_with, make_foreign_ca_identity


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
    for site in fleet.sites:
        specs.extend(
            IdentitySpec(
                name=bridge_identity_name(edge), kind="bridge", revoked_reason=site.bridge_revoked
            )
            for edge in site.edges
        )
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


# Where the generated CA passphrase is kept (pki_passphrase_generated).
PASSPHRASE_SLOT = "pki-passphrase"  # noqa: S105 (a slot name)


def pki_settings_for(fleet: Fleet, state_dir: Path, secrets: SecretStore) -> PkiSettings:
    """The PKI engine's settings from the inventory's ``pki_*`` keys.

    A generated passphrase comes from ``secrets`` (staged there by a planning run when new).
    """
    config = fleet.pki
    passphrase_file, passphrase_value = config.passphrase_file, None
    if config.passphrase_generated:
        passphrase_value = secrets.generated(PASSPHRASE_SLOT).encode()
        passphrase_file = secrets.slot_path(PASSPHRASE_SLOT)
    return PkiSettings(
        state_dir=config.state_dir or state_dir / "pki",
        passphrase_env=config.passphrase_env,
        passphrase_file=passphrase_file,
        passphrase_value=passphrase_value,
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
# And one from a CA the fleet does not trust, with the fleet CA's names (only the keys differ).
FOREIGN_CANARY = "iotfleet-canary-foreign"


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


def foreign_canary_paths(state_dir: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, its CA chain) of the foreign-CA canary."""
    directory = canary_dir(state_dir)
    return (
        directory / f"{FOREIGN_CANARY}.pem",
        directory / f"{FOREIGN_CANARY}.key",
        directory / f"{FOREIGN_CANARY}-ca.pem",
    )


def _ensure_foreign_canary(state_dir: Path, ca_name: str) -> None:
    cert_path, key_path, ca_path = foreign_canary_paths(state_dir)
    if cert_path.exists() and key_path.exists() and ca_path.exists():
        return
    foreign = make_foreign_ca_identity(FOREIGN_CANARY, kind="client", ca_name=ca_name)
    write_file_atomically(key_path, foreign.private_key_pem, mode=0o600)
    write_file_atomically(ca_path, foreign.ca_chain_pem, mode=0o600)
    write_file_atomically(cert_path, foreign.certificate_pem, mode=0o600)


def reconcile_fleet(
    fleet: Fleet, settings: PkiSettings, state_dir: Path, *, now: datetime | None = None
) -> ReconcileReport:
    """Reconcile the PKI with the fleet, canaries included (needs the CA passphrase).

    One reconcile: a missing revoked canary is issued and revoked in the same run, a missing
    expired one signed while the state is locked. Inside a planning stage every write
    (canaries included) is recorded for the commit.

    ``now``: the time to act at (default: the clock); tests move time with it.
    """
    directory = canary_dir(state_dir)
    revoked_missing = not (directory / f"{REVOKED_CANARY}.pem").exists()
    expired_missing = not (directory / f"{EXPIRED_CANARY}.pem").exists()

    def sign_expired_canary(issuer: Issuer, ca: CaCerts, moment: datetime) -> None:
        if expired_missing:
            expired = make_expired_identity_with(issuer, ca, EXPIRED_CANARY, "client", moment)
            _save_canary(
                state_dir, EXPIRED_CANARY, expired.certificate_pem, expired.private_key_pem
            )

    report = reconcile(
        settings,
        [
            *fleet_identities(fleet),
            IdentitySpec(REVOKED_CANARY, "client", revoked_reason="cessationOfOperation"),
        ],
        now=now,
        issue_revoked=(REVOKED_CANARY,) if revoked_missing else (),
        with_issuer=sign_expired_canary,
    )
    if REVOKED_CANARY in report.captured:
        certificate_pem, key_pem = report.captured[REVOKED_CANARY]
        _save_canary(state_dir, REVOKED_CANARY, certificate_pem, key_pem)
    _ensure_foreign_canary(state_dir, settings.ca_name)
    return report
