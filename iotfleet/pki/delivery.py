"""The delivery ledger: which certificate each device was sent over the air, and which one it uses.

``delivery.json`` in the state dir, beside the index but not part of it: these are observations
(a publish the broker acknowledged, a serial a gateway reported on its status topic), not
decisions of the CA. The reconciler reads it to revoke a renewed device's previous certificate
only once the device is seen using the new one; `iotfleet pki status` shows it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from iotfleet.pki import fsio
from iotfleet.pki.errors import StateError
from iotfleet.pki.index import format_time, parse_time
from iotfleet.pki.layout import StateLayout, serial_hex
from iotfleet.pki.state import load_devices_doc, locked_layout

FORMAT = "iotfleet-pki-delivery/1"
_REBUILT = "delete it, the next `iotfleet pki deliver` rebuilds it"


@dataclass(frozen=True)
class Delivery:
    """What is known of one device's certificates in the field (serials as integers)."""

    delivered: int | None = None  # last serial published to its certificate topic (PUBACKed)
    delivered_at: datetime | None = None
    in_use: int | None = None  # last serial the gateway reported using
    seen_at: datetime | None = None


def ledger_path(layout: StateLayout) -> Path:
    return layout.root / "delivery.json"


def load_ledger(layout: StateLayout) -> dict[str, Delivery]:
    """The ledger (empty if nothing was ever delivered); the caller holds the state lock."""
    path = ledger_path(layout)
    devices = load_devices_doc(path, FORMAT, "delivery ledger", _REBUILT)
    ledger: dict[str, Delivery] = {}
    try:
        for name, entry in (devices or {}).items():
            ledger[name] = Delivery(
                delivered=_serial(entry.get("delivered")),
                delivered_at=_time(entry.get("delivered_at")),
                in_use=_serial(entry.get("in_use")),
                seen_at=_time(entry.get("seen_at")),
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: malformed entry ({exc}): {_REBUILT}") from None
    return ledger


def read_ledger(state_dir: Path) -> dict[str, Delivery]:
    """The ledger, read under a shared lock (for status pages); empty before the first run."""
    if not state_dir.is_dir():
        return {}
    with locked_layout(state_dir, shared=True) as layout:
        return load_ledger(layout)


def record_observations(
    state_dir: Path,
    *,
    delivered: Mapping[str, int] | None = None,
    in_use: Mapping[str, int] | None = None,
    now: datetime,
) -> dict[str, Delivery]:
    """Merge what a delivery run saw into the ledger (atomically, under the lock)."""
    with locked_layout(state_dir) as layout:
        ledger = load_ledger(layout)
        for name, serial in (delivered or {}).items():
            ledger[name] = replace(ledger.get(name, Delivery()), delivered=serial, delivered_at=now)
        for name, serial in (in_use or {}).items():
            ledger[name] = replace(ledger.get(name, Delivery()), in_use=serial, seen_at=now)
        fsio.atomic_write(
            ledger_path(layout),
            _to_json(ledger),
            fsio.KEY_MODE,
            not_done="what this delivery saw is not recorded (the certificates "
            "were published; the next delivery run sees them again)",
        )
        return ledger


def _to_json(ledger: Mapping[str, Delivery]) -> bytes:
    devices = {
        name: {
            "delivered": serial_hex(d.delivered) if d.delivered is not None else None,
            "delivered_at": format_time(d.delivered_at) if d.delivered_at else None,
            "in_use": serial_hex(d.in_use) if d.in_use is not None else None,
            "seen_at": format_time(d.seen_at) if d.seen_at else None,
        }
        for name, d in sorted(ledger.items())
    }
    return (json.dumps({"format": FORMAT, "devices": devices}, indent=1) + "\n").encode()


def _serial(value: object) -> int | None:
    return None if value is None else int(str(value), 16)


def _time(value: object) -> datetime | None:
    return None if value is None else parse_time(str(value))
