"""How much time is left: CA certificates, CRLs and every valid identity (no passphrase needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from iotfleet.pki.clock import future_dated
from iotfleet.pki.delivery import Delivery, load_ledger
from iotfleet.pki.reconciler import utc_now, within
from iotfleet.pki.rekey import load_rekeys
from iotfleet.pki.spec import PkiSettings
from iotfleet.pki.state import load_state, locked_layout

OK = "ok"
RENEW = "renew"  # inside its renewal / refresh window
EXPIRED = "expired"  # certificate past notAfter
STALE = "stale"  # CRL past nextUpdate, or not the one the index recorded
MISSING = "missing"
RETIRING = "retiring"  # renewed on the same key; kept valid until its successor is in use
FUTURE = "future"  # dated after the clock (thisUpdate, notBefore): signed by a clock ahead
_FUTURE_NOTE = "dated later than this clock: brokers refuse it until then (see docs/pki.md)"
_FINE = (OK, RETIRING)


@dataclass(frozen=True)
class StatusRow:
    """One line of `iotfleet pki status`. ``expires`` is notAfter, or nextUpdate for a CRL."""

    kind: str  # root-ca, intermediate-ca, crl, root-crl, broker, device, client
    name: str
    serial: str
    expires: datetime | None
    days_left: int | None
    state: str
    note: str = ""
    # Devices renewed over the air: "yes"/"no" (whether this certificate was delivered to the
    # gateway / is the one it reports using); "-" when nothing is known or nothing is due.
    delivered: str = ""
    in_use: str = ""

    @property
    def needs_attention(self) -> bool:
        return self.state not in _FINE


@dataclass(frozen=True)
class StatusReport:
    """Rows in display order: CA, CRLs, then identities in issuance order."""

    state_dir: Path
    rows: tuple[StatusRow, ...]
    root_key_online: bool

    @property
    def needs_attention(self) -> bool:
        return any(row.needs_attention for row in self.rows)

    @property
    def attention_rows(self) -> tuple[StatusRow, ...]:
        return tuple(row for row in self.rows if row.needs_attention)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _days_left(deadline: datetime, now: datetime) -> int:
    return math.floor((deadline - now).total_seconds() / 86400)


def _cert_state(not_after: datetime, now: datetime, window: int) -> str:
    if not_after <= now:
        return EXPIRED
    return RENEW if within(not_after, now, window) else OK


def _crl_state(next_update: datetime, now: datetime, window: int, matches: bool) -> str:
    if next_update <= now or not matches:
        return STALE
    return RENEW if within(next_update, now, window) else OK


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def status(settings: PkiSettings, *, now: datetime | None = None) -> StatusReport:
    """Read the state dir (verifying the index) and report days left for everything that expires.

    ``needs_attention`` is True when anything is inside its renewal window, expired, or a CRL is
    stale or close to nextUpdate.
    """
    moment = utc_now(now)
    with locked_layout(settings.state_dir, shared=True) as layout:
        state = load_state(layout)
        ledger = load_ledger(layout)
        rekeys = load_rekeys(layout)
    rows: list[StatusRow] = []
    ahead = {item.what for item in future_dated(state, moment)}
    ca = state.ca
    if ca is None:
        rows.append(
            StatusRow(
                "root-ca", settings.ca_name, "", None, None, MISSING, "no CA yet: run a reconcile"
            )
        )
        return StatusReport(layout.root, tuple(rows), False)
    index = state.index
    offline = "" if ca.root_key_online else "root key offline"
    rows.append(
        StatusRow(
            "root-ca",
            _common_name(ca.root),
            f"{ca.root.serial_number:040x}",
            ca.root.not_valid_after_utc,
            _days_left(ca.root.not_valid_after_utc, moment),
            _cert_state(
                ca.root.not_valid_after_utc, moment, settings.intermediate_renew_before_days
            ),
            offline,
        )
    )
    inter = ca.intermediate
    rows.append(
        StatusRow(
            "intermediate-ca",
            _common_name(inter),
            f"{inter.serial_number:040x}",
            inter.not_valid_after_utc,
            _days_left(inter.not_valid_after_utc, moment),
            _cert_state(inter.not_valid_after_utc, moment, settings.intermediate_renew_before_days),
            "renewal needs the root key"
            if offline
            and within(inter.not_valid_after_utc, moment, settings.intermediate_renew_before_days)
            else "",
        )
    )
    for kind, info, matches, window, note in (
        ("crl", index.crl, state.crl_ok, settings.crl_refresh_before_days, ""),
        ("root-crl", index.root_crl, state.root_crl_ok, settings.renew_before_days, offline),
    ):
        if info is None:
            rows.append(StatusRow(kind, "", "", None, None, MISSING, "run a reconcile"))
            continue
        crl_state = _crl_state(info.next_update, moment, window, matches)
        if kind == "crl" and matches and crl_state != OK:
            note = "run `iotfleet pki refresh-crl` (is the CRL timer running?)"
        path = layout.crl if kind == "crl" else layout.root_crl
        if matches and f"{path.name} (thisUpdate)" in ahead:
            crl_state, note = FUTURE, f"thisUpdate {_FUTURE_NOTE}"
        rows.append(
            StatusRow(
                kind,
                f"CRL number {info.number}",
                "",
                info.next_update,
                _days_left(info.next_update, moment),
                crl_state,
                note if matches else "file does not match the index: run a reconcile",
            )
        )
    for record in index.records:
        if record.status == "revoked":
            continue
        if f"the certificate of {record.name} (notBefore)" in ahead:
            rows.append(
                StatusRow(
                    record.kind,
                    record.name,
                    record.serial_hex,
                    record.not_after,
                    _days_left(record.not_after, moment),
                    FUTURE,
                    f"notBefore {record.not_before:%Y-%m-%d %H:%M}: {_FUTURE_NOTE}",
                )
            )
            continue
        delivered = in_use = ""
        seen = ledger.get(record.name, Delivery())
        over_the_air = record.name in ledger or bool(index.retiring(record.name))
        if record.kind == "device" and over_the_air:  # else: flashed, nothing to show
            in_use = "-" if seen.in_use is None else _yes(seen.in_use == record.serial)
            delivered = "-"
            if record.status == "valid" and (
                index.retiring(record.name) or seen.delivered is not None
            ):
                delivered = _yes(seen.delivered == record.serial)
        if record.status == "retiring":
            # Kept valid until the device uses its successor (docs/pki.md): no note, the
            # state says it and narrow terminals keep every column.
            state_name, note = RETIRING, ""
            if within(record.not_after, moment, 0):
                state_name, note = EXPIRED, "never switched"
        else:
            state_name = _cert_state(record.not_after, moment, settings.renew_before_days)
            note = ""
            if record.name in rekeys:  # re-key over the air in progress
                asked = rekeys[record.name]
                note = f"re-key ({asked.reason}): " + ("CSR received" if asked.csr else "asked")
        rows.append(
            StatusRow(
                record.kind,
                record.name,
                record.serial_hex,
                record.not_after,
                _days_left(record.not_after, moment),
                state_name,
                note,
                delivered,
                in_use,
            )
        )
    return StatusReport(layout.root, tuple(rows), ca.root_key_online)
