"""Fleet PKI engine: a private CA issuing broker, device and client identities from the inventory.

Public API (see docs/pki.md):
- ``reconcile(settings, identities, now=None) -> ReconcileReport``: make the state match.
- ``PkiStore(state_dir)``: read certificates, keys, chain, CRL (no passphrase).
- ``status(settings, now=None) -> StatusReport``: days left, ``needs_attention``.
- ``revoke(settings, name, reason, now=None) -> IndexRecord``: manual revocation.
- ``renew_intermediate(settings, now=None) -> datetime``: needs the root key online.
- ``refresh_crl(settings, now=None, force=False) -> datetime | None``: re-sign the CRL only.
"""

from __future__ import annotations

from iotfleet.pki.errors import (
    CaExpiredError,
    ClockBehindError,
    IndexCorruptError,
    PassphraseError,
    PkiError,
    PkiInputError,
    RootKeyOfflineError,
    StateError,
    StateWriteError,
)
from iotfleet.pki.health import StatusReport, StatusRow, status
from iotfleet.pki.index import IndexRecord
from iotfleet.pki.manual import refresh_crl, renew_intermediate, revoke
from iotfleet.pki.reconciler import ReconcileReport, reconcile
from iotfleet.pki.spec import (
    NAME_RULE,
    REVOCATION_REASONS,
    IdentitySpec,
    PkiSettings,
)
from iotfleet.pki.store import NotIssuedError, PkiStore

__all__ = [
    "NAME_RULE",
    "REVOCATION_REASONS",
    "CaExpiredError",
    "ClockBehindError",
    "IdentitySpec",
    "IndexCorruptError",
    "IndexRecord",
    "NotIssuedError",
    "PassphraseError",
    "PkiError",
    "PkiInputError",
    "PkiSettings",
    "PkiStore",
    "ReconcileReport",
    "RootKeyOfflineError",
    "StateError",
    "StateWriteError",
    "StatusReport",
    "StatusRow",
    "reconcile",
    "refresh_crl",
    "renew_intermediate",
    "revoke",
    "status",
]
