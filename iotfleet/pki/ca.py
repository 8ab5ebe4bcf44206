"""The two CA levels: create them, load them, check them, re-certify the intermediate.

The root key signs only the intermediate (and the root's CRL), so it can live offline; daily
work (issue, renew, revoke, CRL) needs only the intermediate key. Both keys are encrypted with
the passphrase at rest.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotfleet.pki import fsio
from iotfleet.pki.certs import (
    BACKDATE,
    Issuer,
    authority_key_id,
    build_intermediate,
    build_root,
    public_key_of,
    public_key_of_cert,
)
from iotfleet.pki.errors import CaExpiredError, RootKeyOfflineError, StateError
from iotfleet.pki.keys import PrivateKey, encrypted_key_pem, generate_key, load_encrypted_key
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.passphrase import Passphrase
from iotfleet.pki.spec import PkiSettings


@dataclass(frozen=True)
class CaCerts:
    """The CA certificates of a state dir (public: loading them needs no passphrase)."""

    root: x509.Certificate
    intermediate: x509.Certificate
    root_key_online: bool


@dataclass(frozen=True)
class NewCa:
    """A CA created in memory, written by ``write_new_ca``."""

    certs: CaCerts
    root_key: PrivateKey
    intermediate_key: PrivateKey


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(certs: CaCerts) -> bytes:
    """Issuing intermediate first, then the root: what brokers and devices trust."""
    return pem(certs.intermediate) + pem(certs.root)


def _load_cert(path: os.PathLike[str]) -> x509.Certificate:
    try:
        with open(path, "rb") as handle:
            return x509.load_pem_x509_certificate(handle.read())
    except FileNotFoundError:
        raise StateError(f"{path} is missing; restore the ca/ directory from a backup") from None
    except ValueError:
        raise StateError(f"{path} is not a PEM certificate (damaged?)") from None


def load_ca_certs(layout: StateLayout) -> CaCerts | None:
    """The CA certificates, or None for a state dir where no CA exists yet."""
    if layout.is_fresh():
        return None
    if not layout.ca_dir.is_dir():
        raise StateError(
            f"{layout.index_json} exists but {layout.ca_dir} does not; restore ca/ from a backup"
        )
    root = _load_cert(layout.root_cert)
    intermediate = _load_cert(layout.intermediate_cert)
    if not layout.intermediate_key.exists():
        raise StateError(
            f"{layout.intermediate_key} is missing; daily work needs the "
            "intermediate key: restore it from a backup"
        )
    return CaCerts(root, intermediate, layout.root_key.exists())


def check_ca_valid(certs: CaCerts, now: datetime) -> None:
    """Refuse to work with an expired root or intermediate (everything it issued is dead)."""
    if certs.root.not_valid_after_utc <= now:
        raise CaExpiredError(
            f"the root CA expired on {certs.root.not_valid_after_utc:%Y-%m-%d}: this PKI cannot "
            "be repaired; create a new state dir and re-enroll every identity"
        )
    if certs.intermediate.not_valid_after_utc <= now:
        raise CaExpiredError(
            "the issuing intermediate expired on "
            f"{certs.intermediate.not_valid_after_utc:%Y-%m-%d}: "
            "put ca/root.key back (see docs/pki.md) and run `iotfleet pki renew-intermediate`, "
            "then redistribute ca/chain.pem"
        )


def create_ca(settings: PkiSettings, now: datetime) -> NewCa:
    """A new root and intermediate (keys in memory only until ``write_new_ca``)."""
    root_key = generate_key("ec-p256")
    root = build_root(
        root_key,
        settings.ca_name,
        x509.random_serial_number(),
        now - BACKDATE,
        now + timedelta(days=settings.root_days),
    )
    intermediate_key = generate_key("ec-p256")
    intermediate = build_intermediate(
        public_key_of(intermediate_key),
        root_key,
        root,
        settings.ca_name,
        x509.random_serial_number(),
        now - BACKDATE,
        min(now + timedelta(days=settings.intermediate_days), root.not_valid_after_utc),
    )
    return NewCa(CaCerts(root, intermediate, True), root_key, intermediate_key)


def write_new_ca(layout: StateLayout, new_ca: NewCa, passphrase: Passphrase) -> None:
    """Write ca/ complete or not at all: build it in a temp dir, then rename it into place."""
    if layout.ca_dir.exists():
        raise StateError(f"{layout.ca_dir} already exists: refusing to overwrite CA keys")
    staging = layout.root / f".ca-new-{secrets.token_hex(4)}"
    fsio.ensure_dir(staging)
    try:
        fsio.create_exclusive_durable(
            staging / layout.root_key.name,
            encrypted_key_pem(new_ca.root_key, passphrase),
            fsio.KEY_MODE,
        )
        fsio.create_exclusive_durable(
            staging / layout.intermediate_key.name,
            encrypted_key_pem(new_ca.intermediate_key, passphrase),
            fsio.KEY_MODE,
        )
        fsio.atomic_write(staging / layout.root_cert.name, pem(new_ca.certs.root))
        fsio.atomic_write(staging / layout.intermediate_cert.name, pem(new_ca.certs.intermediate))
        fsio.atomic_write(staging / layout.chain.name, chain_pem(new_ca.certs))
        fsio.rename_tree(staging, layout.ca_dir)
    except BaseException:
        fsio.remove_tree(staging)
        raise
    fsio.fsync_dir(layout.root)


def remove_stale_staging(layout: StateLayout) -> None:
    """Drop a half-built ca/ left by a crash during CA creation (it was never used)."""
    for entry in layout.root.glob(".ca-new-*"):
        fsio.remove_tree(entry)


def load_issuer(layout: StateLayout, certs: CaCerts, passphrase: Passphrase) -> Issuer:
    """The intermediate's signing key (decrypted) bundled with what leaves need from it."""
    key = load_encrypted_key(layout.intermediate_key, passphrase)
    return issuer_from(key, certs.intermediate, layout)


def issuer_from(
    key: PrivateKey, intermediate: x509.Certificate, layout: StateLayout | None = None
) -> Issuer:
    """Bundle a key with its certificate after checking that they belong together."""
    if key.public_key() != intermediate.public_key():
        where = f"{layout.intermediate_key}" if layout else "the intermediate key"
        raise StateError(
            f"{where} does not match ca/intermediate.crt; restore both from the same backup"
        )
    return Issuer(key, intermediate.subject, authority_key_id(intermediate), intermediate)


def load_root_key(layout: StateLayout, passphrase: Passphrase, purpose: str) -> PrivateKey:
    """The root key, or a clear RootKeyOfflineError saying what needs it."""
    if not layout.root_key.exists():
        raise RootKeyOfflineError(
            f"{purpose} needs the root key, but {layout.root_key} is not there (the root is "
            "offline). Copy root.key back from its offline medium into ca/, run the command "
            "again, then take it offline again (see docs/pki.md)."
        )
    return load_encrypted_key(layout.root_key, passphrase)


def recertify_intermediate(
    certs: CaCerts, root_key: PrivateKey, settings: PkiSettings, now: datetime
) -> x509.Certificate:
    """A new intermediate certificate for the same key and subject.

    Same key means same SKI: every leaf already issued chains to the new certificate, so
    renewing the intermediate needs no mass re-issue, only a new ca/chain.pem on the hosts.
    """
    if root_key.public_key() != certs.root.public_key():
        raise StateError("ca/root.key does not match ca/root.crt")
    return build_intermediate(
        public_key_of_cert(certs.intermediate),
        root_key,
        certs.root,
        settings.ca_name,
        x509.random_serial_number(),
        now - BACKDATE,
        min(now + timedelta(days=settings.intermediate_days), certs.root.not_valid_after_utc),
    )
