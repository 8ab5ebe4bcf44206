"""The rules a gateway's CSR must pass before the CA signs its new key (re-key over the air).

A CSR arrives over MQTT on the device's own CSR topic, which only that device may write (ACL),
but the CA trusts none of it: the subject must be exactly ``CN=<device id>``, the CSR must be
signed by the key it carries (proof that whoever sent it holds that key), and the key must be
the type the inventory gives the device. Only the public key is used: every other field of the
CSR (extensions, other names) is ignored, the certificate is built from the inventory alone.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from iotfleet.pki.errors import PkiError
from iotfleet.pki.keys import key_type_of


class CsrRejectedError(PkiError, ValueError):
    """The CSR must not be signed; the message says why (it never echoes the CSR)."""


def checked_csr_key(csr_pem: bytes, device: str, key_type: str) -> bytes:
    """The CSR's public key (SubjectPublicKeyInfo PEM) once every rule holds.

    Raises ``CsrRejectedError`` naming the device and the first rule broken.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CsrRejectedError(f"{device}: the CSR is not a PEM PKCS#10 request") from None
    attributes = list(csr.subject)
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attributes) != 1 or len(names) != 1 or names[0].value != device:
        raise CsrRejectedError(
            f"{device}: the CSR's subject is {csr.subject.rfc4514_string()!r}, not 'CN={device}'"
        )
    if not csr.is_signature_valid:
        raise CsrRejectedError(f"{device}: the CSR is not signed by the key it carries")
    try:
        public = csr.public_key()
    except ValueError:
        raise CsrRejectedError(f"{device}: the CSR's public key cannot be read") from None
    found = key_type_of(public)
    if found != key_type:
        raise CsrRejectedError(
            f"{device}: the CSR carries a {found} key, the inventory says {key_type}"
        )
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_pem_of_certificate(certificate_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a certificate (to compare with a CSR's key)."""
    return (
        x509.load_pem_x509_certificate(certificate_pem)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
