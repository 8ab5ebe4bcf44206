"""The leaf certificate profile, and signing leaves fast: one source for the engine and its workers.

This module imports nothing of iotfleet (only the standard library and ``cryptography``), so a
signing worker (``iotfleet.pki.sign_worker``) loads it alone in a fresh interpreter in a
fraction of the time the ``iotfleet.pki`` package takes to import.

Broker leaves: serverAuth + DNS/IP SANs. Device, client and bridge leaves: clientAuth, CN = MQTT
identity, and a ``urn:iotfleet:<kind>:<name>`` URI SAN. Every leaf: SKI, critical
basicConstraints CA:false, critical keyUsage (digitalSignature; RSA keys also keyEncipherment
for TLS 1.2 RSA key exchange, which BearSSL offers), AKI.

Speed: a leaf is signed from a ``CertificateBuilder`` made in one call with every extension
(the fixed ones built once per signer) instead of a chain of builder calls, and an EC key's SKI
is the SHA-1 of its public point (RFC 5280 method 1, what ``cryptography`` computes through a
DER round trip). Same bytes to be signed as the chained builder: a unit test compares them.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_NO_ENCRYPTION = serialization.NoEncryption()
_X962 = serialization.Encoding.X962
_POINT = serialization.PublicFormat.UncompressedPoint
_P256 = ec.SECP256R1()


def key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    """A keyUsage value with only the named bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def identity_uri(kind: str, name: str) -> str:
    """The URI SAN of a device/client/bridge certificate."""
    return f"urn:iotfleet:{kind}:{name}"


def generate_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A new private key: "ec-p256" (default) or "rsa-2048"."""
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(_P256)


def plain_key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 PEM (leaf keys: brokers and devices must read them unattended)."""
    return key.private_bytes(_PEM, _PKCS8, _NO_ENCRYPTION)


def subject_key_id(public_key: CertificatePublicKeyTypes) -> x509.SubjectKeyIdentifier:
    """RFC 5280 method 1: SHA-1 of the subjectPublicKey bits."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return x509.SubjectKeyIdentifier(
            hashlib.sha1(public_key.public_bytes(_X962, _POINT)).digest()  # noqa: S324 (RFC 5280)
        )
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _ext(
    oid: x509.ObjectIdentifier, critical: bool, value: x509.ExtensionType
) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(oid, critical, value)


_NOT_CA = _ext(ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(False, None))
_KU_EC = _ext(ExtensionOID.KEY_USAGE, True, key_usage(digital_signature=True))
_KU_RSA = _ext(
    ExtensionOID.KEY_USAGE, True, key_usage(digital_signature=True, key_encipherment=True)
)
_EKU_SERVER = _ext(
    ExtensionOID.EXTENDED_KEY_USAGE, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
)
_EKU_CLIENT = _ext(
    ExtensionOID.EXTENDED_KEY_USAGE, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
)


def _naive_utc(moment: datetime) -> datetime:
    """What ``CertificateBuilder``'s validity setters store (naive UTC)."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


class LeafSigner:
    """Signs leaves for one issuer: its key, subject and AKI (fixed parts built once)."""

    def __init__(
        self,
        key: CertificateIssuerPrivateKeyTypes,
        subject: x509.Name,
        aki: x509.AuthorityKeyIdentifier,
    ) -> None:
        self.key = key
        self.subject = subject
        self.aki = aki
        self._aki_ext = _ext(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, aki)
        self._hash = hashes.SHA256()  # supported by BearSSL, Mosquitto and every verifier

    def sign(
        self,
        name: str,
        kind: str,
        public_key: CertificatePublicKeyTypes,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> x509.Certificate:
        """The leaf of ``name`` (kind broker, device, client or bridge) for ``public_key``."""
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if not sans:
            # RFC 5280 verifiers (cryptography's client verifier among them) require a SAN;
            # Mosquitto keeps using the CN.
            sans = [x509.UniformResourceIdentifier(identity_uri(kind, name))]
        extensions = [
            _ext(ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, subject_key_id(public_key)),
            _NOT_CA,
            _KU_RSA if isinstance(public_key, rsa.RSAPublicKey) else _KU_EC,
            _EKU_SERVER if kind == "broker" else _EKU_CLIENT,
            self._aki_ext,
            _ext(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, x509.SubjectAlternativeName(sans)),
        ]
        builder = x509.CertificateBuilder(
            self.subject,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            public_key,
            serial,
            _naive_utc(not_before),
            _naive_utc(not_after),
            extensions,
        )
        return builder.sign(self.key, self._hash)

    def issue(
        self,
        job: tuple[
            str, str, str, tuple[str, ...], tuple[str, ...], int, datetime, datetime,
            bytes | None, bytes | None,
        ],
    ) -> tuple[bytes, bytes]:  # fmt: skip
        """(certificate PEM, key PEM) for one job in wire form (see ``issue.wire_job``): a new
        key, the given key (same-key renewal), or only a public key (key PEM ``b""``)."""
        name, kind, key_type, dns, ips, serial, not_before, not_after, key_pem, public_pem = job
        if public_pem is not None:
            public = serialization.load_pem_public_key(public_pem)
            cert = self.sign(name, kind, public, serial, not_before, not_after, dns, ips)  # type: ignore[arg-type]
            return cert.public_bytes(_PEM), b""
        if key_pem is not None:
            key = serialization.load_pem_private_key(key_pem, password=None)
        else:
            key = generate_key(key_type)
            key_pem = plain_key_pem(key)
        public = key.public_key()
        cert = self.sign(name, kind, public, serial, not_before, not_after, dns, ips)  # type: ignore[arg-type]
        return cert.public_bytes(_PEM), key_pem
