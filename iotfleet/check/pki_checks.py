"""The broker's certificates, key and CRL on disk against the fleet PKI, and their lifetimes.

Only public material travels from the host (certificates, chain, CRL); the private key is
compared by its SHA-256 digest, computed on the host.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from cryptography import x509

from iotfleet.mosquitto import layout

CERT_MARGIN_DAYS = 14  # a certificate closer to expiry than this fails the check
# A CRL closer to nextUpdate than this fails the check: with the fleet defaults (CRL valid 7
# days, re-signed by the daily CRL timer when 5 are left) it means the timer missed two runs,
# three days before every client certificate is refused.
CRL_MARGIN_HOURS = 72


def load_pem_certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _serial(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


def issued_certificate_problems(host: str, issued_pem: bytes, on_host: bytes | None) -> list[str]:
    if on_host is None:
        return [f"{layout.SERVER_CERT} is missing on {host}"]
    try:
        host_cert = x509.load_pem_x509_certificate(on_host)
    except ValueError:
        return [f"{layout.SERVER_CERT} on {host} is not a PEM certificate"]
    issued = x509.load_pem_x509_certificate(issued_pem)
    if host_cert == issued:
        return []
    return [
        f"the broker certificate on {host} is not the one the fleet PKI issued (serial "
        f"{_serial(host_cert)}, issuer '{host_cert.issuer.rfc4514_string()}'; the PKI issued "
        f"serial {_serial(issued)})"
    ]


def key_problems(host: str, issued_key_pem: bytes, digest_on_host: str | None) -> list[str]:
    if digest_on_host is None:
        return [f"{layout.SERVER_KEY} is missing on {host}"]
    if hashlib.sha256(issued_key_pem).hexdigest() != digest_on_host:
        return [f"{layout.SERVER_KEY} on {host} is not the key the fleet PKI issued for it"]
    return []


def chain_problems(host: str, chain_pem: bytes, on_host: bytes | None) -> list[str]:
    if on_host is None:
        return [f"{layout.CA_CHAIN} is missing on {host}"]
    try:
        host_chain = load_pem_certificates(on_host)
    except ValueError:
        return [f"{layout.CA_CHAIN} on {host} is not a PEM certificate chain"]
    fleet_chain = load_pem_certificates(chain_pem)
    extra = [c for c in host_chain if c not in fleet_chain]
    problems = []
    if extra:
        names = "; ".join(c.subject.rfc4514_string() for c in extra)
        problems.append(
            f"the broker on {host} trusts client certificates from CAs outside the fleet PKI: "
            f"{names}"
        )
    if any(c not in host_chain for c in fleet_chain):
        problems.append(f"{layout.CA_CHAIN} on {host} lacks part of the fleet's CA chain")
    return problems


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def crl_problems(
    host: str, fleet_crl_pem: bytes, on_host: bytes | None, now: datetime | None = None
) -> list[str]:
    """The CRL on the host is the fleet's current one (every revocation is known)."""
    if on_host is None:
        return [f"{layout.CRL} is missing on {host}: revoked certificates are accepted"]
    try:
        host_crl = x509.load_pem_x509_crl(on_host)
    except ValueError:
        return [f"{layout.CRL} on {host} is not a PEM CRL"]
    fleet_crl = x509.load_pem_x509_crl(fleet_crl_pem)
    if fleet_crl.last_update_utc > (now or datetime.now(UTC)):
        return [
            f"the fleet's CRL on the control machine is dated in the future (thisUpdate "
            f"{fleet_crl.last_update_utc:%Y-%m-%d %H:%M} UTC): signed while its clock ran ahead, "
            f"rollouts refuse to sign; {host} cannot be given a current CRL until it is re-signed"
            " (`iotfleet pki refresh-crl --force -i INVENTORY` with the clock right)"
        ]
    if host_crl == fleet_crl:
        return []
    fleet_revoked = {r.serial_number for r in fleet_crl}
    host_revoked = {r.serial_number for r in host_crl}
    missing = len(fleet_revoked - host_revoked)
    detail = f"; {missing} revoked certificate(s) missing from it" if missing else ""
    return [
        f"the CRL on {host} is not the fleet's current CRL (number {_crl_number(host_crl)} on "
        f"the host, {_crl_number(fleet_crl)} in the PKI){detail}: run a rollout"
    ]


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    if days < 0:
        return f"expired {abs(days):.1f} days ago"
    return f"expires in {days:.1f} days"


def expiry_problems(
    host: str,
    certificates: list[tuple[str, x509.Certificate]],
    margin_days: float,
    now: datetime | None = None,
) -> list[str]:
    """Each (label, certificate) stays valid for at least ``margin_days``."""
    moment = now or datetime.now(UTC)
    problems = []
    for label, cert in certificates:
        left = cert.not_valid_after_utc - moment
        if left < timedelta(days=margin_days):
            problems.append(
                f"the {label} on {host} {_days(left)} (notAfter "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; margin {margin_days:g} days)"
            )
        if cert.not_valid_before_utc > moment:
            problems.append(
                f"the {label} on {host} is not valid yet (notBefore "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
            )
    return problems


def crl_next_update(on_host: bytes | None) -> datetime | None:
    """The CRL's nextUpdate (None when there is no readable CRL or it has none)."""
    if on_host is None:
        return None
    try:
        return x509.load_pem_x509_crl(on_host).next_update_utc
    except ValueError:
        return None


def crl_update_problems(
    host: str, on_host: bytes | None, margin_hours: float, now: datetime | None = None
) -> list[str]:
    """The CRL's nextUpdate is further away than the margin (Mosquitto refuses every client
    certificate once it has passed)."""
    if on_host is None:
        return [f"{layout.CRL} is missing on {host}"]
    try:
        crl = x509.load_pem_x509_crl(on_host)
    except ValueError:
        return [f"{layout.CRL} on {host} is not a PEM CRL"]
    moment = now or datetime.now(UTC)
    if crl.last_update_utc > moment:
        return [
            f"the CRL on {host} is dated in the future (thisUpdate "
            f"{crl.last_update_utc:%Y-%m-%d %H:%M} UTC): it was signed while the control "
            "machine's clock ran ahead, and the broker refuses every client certificate until "
            "then; set the clock right and run `iotfleet pki refresh-crl --force -i INVENTORY`"
        ]
    next_update = crl.next_update_utc
    if next_update is None:
        return [f"the CRL on {host} has no nextUpdate"]
    left = next_update - moment
    if left >= timedelta(hours=margin_hours):
        return []
    hours = left.total_seconds() / 3600
    when = (
        f"expired {abs(hours) / 24:.1f} days ago" if hours < 0 else f"expires in {hours:.1f} hours"
    )
    consequence = (
        ": the broker refuses every client certificate"
        if hours < 0
        else f" (margin {margin_hours:g} hours): run `iotfleet pki refresh-crl -i INVENTORY`;"
        " is the CRL timer (files/nightly/iotfleet-crl@.timer) running?"
    )
    return [f"the CRL on {host} {when} (nextUpdate {next_update:%Y-%m-%d %H:%M} UTC){consequence}"]
