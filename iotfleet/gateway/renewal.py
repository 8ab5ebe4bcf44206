"""What a gateway checks before it installs a certificate that arrived over MQTT.

The message on its certificate topic is trusted for nothing: the ACL lets only iotfleet write
there, but a gateway must also survive a broker that is misconfigured or compromised. So the
certificate is installed only if it names this device, carries this device's own public key
(the key never changes in a renewal) or the new key it made for a re-key (``pending_key_pem``),
and chains to a root the gateway was flashed with.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from iotfleet.device.contract import Bundle, CertificateUpdate, ContractError


class CertificateRejectedError(ValueError):
    """The pushed certificate must not be used; the message says why (no secret in it)."""


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def serial_of(certificate_pem: bytes) -> str:
    """The certificate's serial as 40 lowercase hex digits (how iotfleet writes serials)."""
    return f"{x509.load_pem_x509_certificate(certificate_pem).serial_number:040x}"


def checked_update(
    payload: bytes,
    bundle: Bundle,
    now: datetime | None = None,
    *,
    pending_key_pem: bytes | None = None,
) -> tuple[bytes, bytes]:
    """(new certificate PEM, the key it certifies) from a certificate-topic message, once it
    passed every check. The key is the gateway's own, or ``pending_key_pem`` (a re-key's new
    key, waiting for its certificate).

    Raises ``CertificateRejectedError`` naming the first check that failed.
    """
    try:
        update = CertificateUpdate.from_payload(payload)
    except ContractError as exc:
        raise CertificateRejectedError(str(exc)) from None
    device = bundle.config.device_id
    if update.device != device:
        raise CertificateRejectedError(f"the update is for {update.device!r}, not {device!r}")
    try:
        leaf = x509.load_pem_x509_certificate(update.certificate.encode())
        chain = x509.load_pem_x509_certificates(update.chain.encode())
        flashed = x509.load_pem_x509_certificates(bundle.ca_chain_pem)
    except ValueError:
        raise CertificateRejectedError("the certificate or its chain is not PEM") from None
    if f"{leaf.serial_number:040x}" != update.serial:
        raise CertificateRejectedError("the serial does not match the certificate")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != device:
        raise CertificateRejectedError(f"the certificate is not issued to {device!r}")
    keys = [bundle.private_key_pem, *([pending_key_pem] if pending_key_pem else [])]
    certified = _spki(leaf.public_key())
    key_pem = next(
        (
            k
            for k in keys
            if _spki(serialization.load_pem_private_key(k, password=None).public_key()) == certified
        ),
        None,
    )
    if key_pem is None:
        raise CertificateRejectedError("the certificate does not carry this gateway's key")
    # Trust anchors come from the flash only; the message may only add intermediates.
    roots = [c for c in flashed if c.subject == c.issuer]
    if not roots:
        raise CertificateRejectedError("no root CA in the flashed /ca.pem")
    intermediates = [c for c in [*chain, *flashed] if c.subject != c.issuer]
    verifier = (
        PolicyBuilder().store(Store(roots)).time(now or datetime.now(UTC)).build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise CertificateRejectedError(f"the certificate does not chain to the CA: {exc}") from None
    return update.certificate.encode(), key_pem
