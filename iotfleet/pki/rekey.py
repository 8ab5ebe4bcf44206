"""Re-key over the air: the control machine's side of it, in the PKI state dir.

``rekey.json`` beside the index records, per device, the re-key asked for (by
`iotfleet pki rekey`, or because its key outlived ``pki_device_key_max_age_days``) and the CSR
the gateway answered with. The delivery step publishes the request and reads the CSR over MQTT
(``iotfleet.fleet.rekey_delivery``); the reconcile plan signs the CSR's key
(``rekey_key_for``) as a renewal whose old certificate stays valid ("retiring") until the
gateway is seen using the new one. The entry is dropped once the gateway uses a certificate
for its new key. The key never leaves the board: the PKI holds no private key for such a
certificate (its key span is empty).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from iotfleet.pki import fsio
from iotfleet.pki.csr import CsrRejectedError, checked_csr_key, spki_pem_of_certificate
from iotfleet.pki.errors import IndexCorruptError, StateError
from iotfleet.pki.index import Index, IndexRecord, format_time, parse_time
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.spec import IdentitySpec
from iotfleet.pki.state import load_devices_doc, locked_layout, read_cert_pem, read_key_pem

FORMAT = "iotfleet-pki-rekey/1"
REASONS = ("operator", "key age")


@dataclass(frozen=True)
class Rekey:
    """One device's re-key in progress."""

    request: str  # hex id the gateway answers with
    reason: str  # "operator" or "key age"
    requested_at: datetime
    csr: bytes | None = None  # the CSR PEM received for this request (checked when received)
    csr_at: datetime | None = None


def rekey_path(layout: StateLayout) -> Path:
    return layout.root / "rekey.json"


def load_rekeys(layout: StateLayout) -> dict[str, Rekey]:
    """The re-keys in progress (none if the file does not exist); the caller holds the lock."""
    path = rekey_path(layout)
    devices = load_devices_doc(
        path, FORMAT, "re-key file",
        "restore it or delete it (then ask again with `iotfleet pki rekey`)",
    )  # fmt: skip
    rekeys: dict[str, Rekey] = {}
    try:
        for name, entry in (devices or {}).items():
            csr = entry.get("csr")
            rekeys[name] = Rekey(
                request=str(entry["request"]),
                reason=str(entry["reason"]),
                requested_at=parse_time(entry["requested_at"]),
                csr=None if csr is None else str(csr).encode(),
                csr_at=None if entry.get("csr_at") is None else parse_time(entry["csr_at"]),
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: malformed entry ({exc})") from None
    return rekeys


def read_rekeys(state_dir: Path) -> dict[str, Rekey]:
    """The re-keys in progress, read under a shared lock (empty if there is no PKI yet)."""
    if not StateLayout(state_dir).root.is_dir():
        return {}
    with locked_layout(state_dir, shared=True) as layout:
        return load_rekeys(layout)


def _save(layout: StateLayout, rekeys: Mapping[str, Rekey]) -> None:
    devices = {
        name: {
            "request": r.request,
            "reason": r.reason,
            "requested_at": format_time(r.requested_at),
            "csr": None if r.csr is None else r.csr.decode(),
            "csr_at": None if r.csr_at is None else format_time(r.csr_at),
        }
        for name, r in sorted(rekeys.items())
    }
    text = json.dumps({"format": FORMAT, "devices": devices}, indent=1) + "\n"
    fsio.atomic_write(rekey_path(layout), text.encode(), fsio.PUBLIC_MODE)


def request_rekey(state_dir: Path, device: str, reason: str, now: datetime) -> Rekey:
    """Ask for a new key for ``device`` (a request already pending is kept, not restarted)."""
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}")
    with locked_layout(state_dir) as layout:
        rekeys = load_rekeys(layout)
        if device in rekeys:
            return rekeys[device]
        rekeys[device] = Rekey(secrets.token_hex(16), reason, now)
        _save(layout, rekeys)
        return rekeys[device]


def record_csr(state_dir: Path, device: str, request: str, csr_pem: bytes, now: datetime) -> bool:
    """Keep the CSR answering ``device``'s pending request; False if no such request is pending
    (an old answer, or one for a request that was finished)."""
    with locked_layout(state_dir) as layout:
        rekeys = load_rekeys(layout)
        entry = rekeys.get(device)
        if entry is None or entry.request != request:
            return False
        if entry.csr != csr_pem:
            rekeys[device] = replace(entry, csr=csr_pem, csr_at=now)
            _save(layout, rekeys)
        return True


def finish_rekeys(state_dir: Path, devices: Mapping[str, str]) -> None:
    """Drop the entries of ``{device: request}`` (their gateways use their new keys)."""
    if not devices:
        return
    with locked_layout(state_dir) as layout:
        rekeys = load_rekeys(layout)
        done = [d for d, request in devices.items() if d in rekeys and rekeys[d].request == request]
        if done:
            for device in done:
                del rekeys[device]
            _save(layout, rekeys)


def holds_key(record: IndexRecord) -> bool:
    """False for a certificate of a key made on the board (re-keyed over the air)."""
    return record.key_span[1] > 0


def same_key(layout: StateLayout, record: IndexRecord) -> tuple[bytes | None, bytes | None]:
    """(private key PEM, public key PEM) to renew ``record`` on the same key: the PKI's copy of
    the key, or only the public key when the key lives on the board alone."""
    if holds_key(record):
        return read_key_pem(layout, record), None
    return None, spki_pem_of_certificate(read_cert_pem(layout, record))


def rekey_key_for(
    layout: StateLayout, spec: IdentitySpec, current: IndexRecord, rekey: Rekey | None
) -> tuple[bytes | None, str | None]:
    """(public key PEM to sign, warning) for a device with a re-key in progress.

    Nothing to sign when no CSR came yet, or the current certificate already carries the CSR's
    key (signed in an earlier run); a warning, and nothing signed, when the CSR breaks a rule.
    """
    if rekey is None or rekey.csr is None:
        return None, None
    try:
        key = checked_csr_key(rekey.csr, spec.name, spec.key_type)
    except CsrRejectedError as exc:
        return None, f"re-key refused, nothing signed: {exc}"
    if key == spki_pem_of_certificate(read_cert_pem(layout, current)):
        return None, None
    return key, None


def key_since(layout: StateLayout, index: Index, name: str) -> datetime | None:
    """When the key of ``name``'s current certificate was first certified (renewals on the same
    key keep it; a re-key starts it again)."""
    current = index.current(name)
    if current is None:
        return None
    key = spki_pem_of_certificate(read_cert_pem(layout, current))
    since = current.not_before
    for record in reversed(index.records):
        if record.name != name or record.serial == current.serial:
            continue
        try:
            if spki_pem_of_certificate(read_cert_pem(layout, record)) != key:
                break
        except (StateError, IndexCorruptError):
            break
        since = min(since, record.not_before)
    return since
