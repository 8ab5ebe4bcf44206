"""Material of the PKI dated after the clock: signed while a clock ran ahead, or this clock is
behind. Brokers refuse a CRL whose thisUpdate is in their future (every client certificate is
then refused) and certificates before their notBefore, so such material is never signed over
silently: reconcile refuses, and `pki status` and `iotfleet check` flag it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from iotfleet.pki.errors import ClockBehindError
from iotfleet.pki.state import LoadedState


@dataclass(frozen=True)
class FutureDated:
    """One item dated after ``now``: what it is (with the field) and its date."""

    what: str
    at: datetime


def future_dated(state: LoadedState, now: datetime) -> list[FutureDated]:
    """Everything of ``state`` dated after ``now``, the newest first: the CA certificates', the
    CRLs' thisUpdate, and the notBefore of every certificate not revoked."""
    items: list[FutureDated] = []
    if state.ca is not None:
        items += [
            FutureDated("the root CA certificate (notBefore)", state.ca.root.not_valid_before_utc),
            FutureDated(
                "the intermediate CA certificate (notBefore)",
                state.ca.intermediate.not_valid_before_utc,
            ),
        ]
    for path in (state.layout.crl, state.layout.root_crl):
        at = _this_update(path)
        if at is not None:
            items.append(FutureDated(f"{path.name} (thisUpdate)", at))
    items += [
        FutureDated(f"the certificate of {r.name} (notBefore)", r.not_before)
        for r in state.index.records
        if r.not_before > now and r.status != "revoked"  # only those dated later are named
    ]
    return sorted((i for i in items if i.at > now), key=lambda i: i.at, reverse=True)


def refuse_future_dated(state: LoadedState, now: datetime) -> None:
    """Raise ``ClockBehindError`` if anything of ``state`` is dated after ``now``."""
    ahead = future_dated(state, now)
    if not ahead:
        return
    newest = ahead[0]
    raise ClockBehindError(
        f"the clock says {now:%Y-%m-%d %H:%M:%S} UTC but {newest.what} is dated "
        f"{newest.at:%Y-%m-%d %H:%M:%S} UTC ({len(ahead)} item(s) of {state.layout.root} are "
        "dated later than now): they were signed while the clock ran ahead, or this clock is "
        "behind. Nothing was signed. Set the clock right (NTP); if it is right now, re-sign the "
        "CRL at this time with `iotfleet pki refresh-crl --force -i INVENTORY` and have "
        "certificates dated later re-issued with `iotfleet pki revoke NAME --reason superseded`"
    )


def _this_update(path: Path) -> datetime | None:
    try:
        return x509.load_pem_x509_crl(path.read_bytes()).last_update_utc
    except (FileNotFoundError, ValueError):
        return None
