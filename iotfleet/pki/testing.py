"""Throwaway identities for attack tests (the lead's compliance and broker tests).

Nothing here writes to the state dir: these certificates are not in the index or the CRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotfleet.pki.ca import CaCerts, chain_pem, create_ca, issuer_from, load_ca_certs
from iotfleet.pki.certs import Issuer, build_leaf, public_key_of
from iotfleet.pki.errors import StateError
from iotfleet.pki.keys import PrivateKey, generate_key, load_encrypted_key, plain_key_pem
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.passphrase import read_passphrase
from iotfleet.pki.reconciler import utc_now
from iotfleet.pki.spec import IdentitySpec, Kind, PkiSettings, validate_identities


@dataclass(frozen=True)
class ThrowawayIdentity:
    """A certificate, its key, and the chain it was issued under."""

    name: str
    certificate_pem: bytes
    private_key_pem: bytes
    ca_chain_pem: bytes
    not_after: datetime


def _spec(
    name: str, kind: Kind, dns_names: tuple[str, ...], ip_addresses: tuple[str, ...]
) -> IdentitySpec:
    spec = IdentitySpec(name=name, kind=kind, dns_names=dns_names, ip_addresses=ip_addresses)
    validate_identities([spec])
    return spec


def _leaf(
    spec: IdentitySpec,
    issuer_key: PrivateKey,
    intermediate: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    chain: bytes,
    key: PrivateKey | None = None,
) -> ThrowawayIdentity:
    issuer = issuer_from(issuer_key, intermediate)
    key = key or generate_key(spec.key_type)
    cert = build_leaf(
        spec, public_key_of(key), issuer, x509.random_serial_number(), not_before, not_after
    )
    return ThrowawayIdentity(
        spec.name,
        cert.public_bytes(serialization.Encoding.PEM),
        plain_key_pem(key),
        chain,
        not_after,
    )


def make_foreign_ca_identity(
    name: str,
    kind: Kind = "device",
    *,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    ca_name: str = "iotfleet",
    now: datetime | None = None,
    key_pem: bytes | None = None,
) -> ThrowawayIdentity:
    """A valid-looking identity from a CA the fleet does not trust.

    Same profile and, by default, the same CA subject names as the fleet's: only the keys differ,
    which is exactly what a verifier must notice. ``key_pem``: certify this (a real device's)
    key instead of a new one, as a forger pushing a certificate to that device would.
    """
    moment = utc_now(now)
    spec = _spec(name, kind, dns_names, ip_addresses)
    foreign = create_ca(PkiSettings(state_dir=Path("/nonexistent"), ca_name=ca_name), moment)
    return _leaf(
        spec,
        foreign.intermediate_key,
        foreign.certs.intermediate,
        moment - timedelta(minutes=5),
        moment + timedelta(days=30),
        chain_pem(foreign.certs),
        _load_key(key_pem) if key_pem else None,
    )


def _load_key(key_pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, PrivateKey)
    return key


def _fleet_intermediate(settings: PkiSettings) -> tuple[CaCerts, PrivateKey]:
    """The fleet's CA certificates and its intermediate's private key (needs the passphrase)."""
    layout = StateLayout(settings.state_dir)
    certs = load_ca_certs(layout)
    if certs is None:
        raise StateError(f"no CA in {layout.root}: run a reconcile first")
    return certs, load_encrypted_key(layout.intermediate_key, read_passphrase(settings))


def make_expired_identity(
    settings: PkiSettings,
    name: str,
    kind: Kind = "device",
    *,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    expired_days_ago: int = 1,
    now: datetime | None = None,
) -> ThrowawayIdentity:
    """An identity signed by the fleet's intermediate that expired ``expired_days_ago`` days ago.

    Needs the CA passphrase (it signs with the real intermediate key).
    """
    certs, key = _fleet_intermediate(settings)
    return make_expired_identity_with(
        issuer_from(key, certs.intermediate),
        certs,
        name,
        kind,
        utc_now(now),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        expired_days_ago=expired_days_ago,
    )


def make_unrecorded_identity(
    settings: PkiSettings,
    name: str,
    kind: Kind = "device",
    *,
    days: int = 30,
    now: datetime | None = None,
    key_pem: bytes | None = None,
) -> ThrowawayIdentity:
    """A valid identity signed by the fleet's own intermediate for a new key (or ``key_pem``),
    recorded nowhere: what a forger with a certificate the CA issued for another key would push
    to ``name``, or what the CA would issue for a key a gateway made.

    Needs the CA passphrase (it signs with the real intermediate key).
    """
    certs, key = _fleet_intermediate(settings)
    moment = utc_now(now)
    return _leaf(
        _spec(name, kind, (), ()),
        key,
        certs.intermediate,
        moment - timedelta(minutes=5),
        moment + timedelta(days=days),
        chain_pem(certs),
        _load_key(key_pem) if key_pem else None,
    )


def make_expired_identity_with(
    issuer: Issuer,
    certs: CaCerts,
    name: str,
    kind: Kind,
    now: datetime,
    *,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    expired_days_ago: int = 1,
) -> ThrowawayIdentity:
    """Like ``make_expired_identity``, with an issuer already loaded (inside a reconcile)."""
    spec = _spec(name, kind, dns_names, ip_addresses)
    not_after = now - timedelta(days=expired_days_ago)
    return _leaf(
        spec,
        issuer.key,
        certs.intermediate,
        not_after - timedelta(days=30),
        not_after,
        chain_pem(certs),
    )


__all__ = [
    "ThrowawayIdentity",
    "make_expired_identity",
    "make_expired_identity_with",
    "make_foreign_ca_identity",
    "make_unrecorded_identity",
]


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def csr_signed_by_another_key(device: str, carried: PrivateKey, signer: PrivateKey) -> bytes:
    """A CSR (PEM) for ``CN=device`` that carries ``carried``'s public key but is signed by
    ``signer``: what someone without the carried key would send (no proof of possession)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    honest = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .sign(carried, hashes.SHA256())
    )
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise TypeError("signer must be an EC key (ecdsa-with-SHA256)")
    tbs = honest.tbs_certrequest_bytes
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    signature = signer.sign(tbs, ec.ECDSA(hashes.SHA256()))
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + bit_string
    der = b"\x30" + _der_length(len(body)) + body
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
