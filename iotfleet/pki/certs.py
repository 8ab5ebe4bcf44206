"""Certificate builders: root CA, issuing intermediate, broker/device/client leaves.

Profile (checked by cryptography's RFC 5280 verifier and `openssl verify` in the tests):
random 159-bit serials, notBefore backdated for clock skew, SKI on every cert, AKI on every
non-root cert, critical basicConstraints and keyUsage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from iotfleet.pki.keys import PrivateKey
from iotfleet.pki.leaf import LeafSigner, key_usage
from iotfleet.pki.spec import IdentitySpec

# Devices with a slow or unset RTC must accept a certificate issued "just now".
BACKDATE = timedelta(minutes=5)


def root_subject(ca_name: str) -> x509.Name:
    """Subject of the root CA."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca_name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_name} Root CA"),
        ]
    )


def intermediate_subject(ca_name: str) -> x509.Name:
    """Subject of the issuing intermediate CA."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca_name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_name} Issuing CA"),
        ]
    )


def leaf_subject(name: str) -> x509.Name:
    """Subject of a leaf: just the CN, which Mosquitto maps to the username."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256:
    """SHA-256: supported by BearSSL, Mosquitto and every verifier we target."""
    del key
    return hashes.SHA256()


def build_root(
    key: CertificateIssuerPrivateKeyTypes,
    ca_name: str,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Self-signed root. pathlen 1: root -> intermediate -> leaf and nothing deeper."""
    subject = root_subject(ca_name)
    builder = (
        _base(subject, subject, key.public_key(), serial, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
    )
    return builder.sign(key, signature_hash(key))


def build_intermediate(
    public_key: CertificatePublicKeyTypes,
    root_key: CertificateIssuerPrivateKeyTypes,
    root: x509.Certificate,
    ca_name: str,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Issuing intermediate: pathlen 0 (signs leaves only), keyCertSign + cRLSign."""
    builder = (
        _base(
            intermediate_subject(ca_name), root.subject, public_key, serial, not_before, not_after
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(authority_key_id(root), critical=False)
    )
    return builder.sign(root_key, signature_hash(root_key))


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI pointing at ``issuer``'s SKI."""
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@dataclass(frozen=True)
class Issuer:
    """What signing a leaf needs from the intermediate (picklable parts precomputed once)."""

    key: PrivateKey
    subject: x509.Name
    aki: x509.AuthorityKeyIdentifier
    # The intermediate certificate itself: signing workers take the subject from its DER.
    certificate: x509.Certificate | None = None

    def signer(self) -> LeafSigner:
        """The leaf signer of this issuer (made once)."""
        signer: LeafSigner | None = self.__dict__.get("_signer")
        if signer is None:
            signer = LeafSigner(self.key, self.subject, self.aki)
            object.__setattr__(self, "_signer", signer)
        return signer


def build_leaf(
    spec: IdentitySpec,
    public_key: CertificatePublicKeyTypes,
    issuer: Issuer,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Broker (serverAuth + SANs) or device/client/bridge (clientAuth, CN = MQTT identity, a
    ``urn:iotfleet:<kind>:<name>`` URI SAN) certificate (profile: ``iotfleet.pki.leaf``)."""
    return issuer.signer().sign(
        spec.name,
        spec.kind,
        public_key,
        serial,
        not_before,
        not_after,
        spec.dns_names,
        spec.ip_addresses,
    )


def public_key_of(key: CertificateIssuerPrivateKeyTypes) -> CertificatePublicKeyTypes:
    """The public half (typed for the builders)."""
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public


def public_key_of_cert(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    """A certificate's public key (typed for the builders)."""
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public
