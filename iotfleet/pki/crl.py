"""CRLs: the intermediate's (over leaves: Mosquitto's crlfile) and the root's (intermediates)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from iotfleet.pki.certs import BACKDATE, authority_key_id, signature_hash
from iotfleet.pki.spec import REVOCATION_REASONS


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial: int
    revoked_at: datetime
    reason: str


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    entries: Iterable[RevokedEntry],
    number: int,
    now: datetime,
    days: int,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer_cert``, valid from now (backdated) for ``days``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id(issuer_cert), critical=False)
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        # RFC 5280 5.3.1: omit reasonCode rather than encode "unspecified".
        if entry.reason != "unspecified":
            revoked = revoked.add_extension(
                x509.CRLReason(REVOCATION_REASONS[entry.reason]), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(issuer_key, signature_hash(issuer_key))


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL number extension (0 when absent)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0
