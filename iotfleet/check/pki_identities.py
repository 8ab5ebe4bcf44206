"""The fleet PKI's identities with their days left, for the reports and metrics (read-only,
no passphrase: the same view as ``iotfleet pki status``)."""

from __future__ import annotations

from datetime import datetime

from iotfleet.check.results import Identity
from iotfleet.pki import PkiError
from iotfleet.pki.health import status
from iotfleet.pki.spec import PkiSettings


def pki_identities(settings: PkiSettings, now: datetime) -> list[Identity]:
    """Every dated row of the PKI's status, soonest first; none when it cannot be read."""
    try:
        report = status(settings, now=now)
    except (PkiError, OSError):
        return []
    rows = [
        # A CRL's name ("CRL number 7") changes with each re-signing: its kind names it.
        Identity(row.kind, row.kind if row.kind.endswith("crl") else row.name, row.expires,
                 row.state)
        for row in report.rows
        if row.expires is not None
    ]  # fmt: skip
    return sorted(rows, key=lambda identity: identity.at)
