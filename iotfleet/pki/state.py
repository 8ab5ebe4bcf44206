"""Load a state dir as a whole (CA certs, index, file inventory) and write its shared parts.

Shared by reconcile, revoke and renew-intermediate so they agree on what "consistent" means:
every valid index record has its certificate and key file; files no record points at were left
by an interrupted run and are removed; crl.pem is the one the index says it last signed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from iotfleet.pki import fsio
from iotfleet.pki.ca import CaCerts, load_ca_certs, remove_stale_staging
from iotfleet.pki.crl import RevokedEntry, build_crl, crl_number
from iotfleet.pki.errors import IndexCorruptError, StateError
from iotfleet.pki.index import CrlInfo, Index, load_index
from iotfleet.pki.layout import StateLayout


@contextlib.contextmanager
def locked_layout(state_dir: Path, *, create: bool = False,
                  shared: bool = False) -> Iterator[StateLayout]:
    """The state dir's layout while holding its lock (exclusive unless ``shared``).

    ``create`` makes the state dir (0700) for a first run; otherwise a missing dir is an error.
    """
    layout = StateLayout(state_dir)
    if create:
        fsio.ensure_dir(layout.root)
    elif not layout.root.is_dir():
        raise StateError(f"no PKI state directory at {layout.root} (run a reconcile first, or "
                         "pass --state-dir)")
    with fsio.state_lock(layout.lock, shared=shared):
        yield layout


@dataclass
class LoadedState:
    """Everything a locked operation needs to decide what to change."""

    layout: StateLayout
    ca: CaCerts | None
    index: Index
    leftovers: list[Path] = field(default_factory=list)  # to remove at the end of a run
    crl_ok: bool = True
    root_crl_ok: bool = True
    txt_missing: bool = False


def sha256_file(path: Path) -> str | None:
    """Hex digest of a file, None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def load_state(layout: StateLayout) -> LoadedState:
    """Read and cross-check the state dir; raise a PkiError before anything is written."""
    ca = load_ca_certs(layout)
    index = load_index(layout)
    if ca is None and index.records:
        raise IndexCorruptError(f"{layout.index_json} lists certificates but there is no CA")
    state = LoadedState(layout, ca, index)
    if ca is None:
        return state
    state.leftovers = _scan_files(layout, index)
    state.crl_ok = index.crl is not None and sha256_file(layout.crl) == index.crl.sha256
    state.root_crl_ok = (index.root_crl is not None
                         and sha256_file(layout.root_crl) == index.root_crl.sha256)
    state.txt_missing = not layout.index_txt.exists()
    return state


def _scan_files(layout: StateLayout, index: Index) -> list[Path]:
    """Check valid records have their files; return files left by interrupted runs."""
    certs = {layout.cert_path(r.name, r.serial).name: r for r in index.records}
    keys = {layout.key_path(r.name, r.serial).name: r for r in index.records}
    leftovers: list[Path] = []
    present: set[str] = set()
    for directory, known, suffix in ((layout.issued_dir, certs, ".crt"),
                                     (layout.private_dir, keys, ".key")):
        if not directory.is_dir():
            continue
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                record = known.get(name)
                if record is not None:
                    if suffix == ".key" and record.status == "revoked":
                        leftovers.append(Path(entry.path))  # keys of revoked certs are dropped
                    else:
                        present.add(name)
                elif fsio.is_temp_name(name) or _looks_issued(name, suffix):
                    leftovers.append(Path(entry.path))
    for record in index.records:
        if record.status != "valid":
            continue
        for path in (layout.cert_path(record.name, record.serial),
                     layout.key_path(record.name, record.serial)):
            if path.name not in present:
                raise IndexCorruptError(
                    f"{path} is missing but the index lists {record.name!r} (serial "
                    f"{record.serial_hex}) as valid: restore it from a backup, or revoke it "
                    f"(`iotfleet pki revoke {record.name} --reason keyCompromise`) so the next "
                    "run issues a new one"
                )
    remove_stale_staging(layout)
    return leftovers


def _looks_issued(filename: str, suffix: str) -> bool:
    """Our naming scheme <name>.<40 hex serial><suffix> (other files are left alone)."""
    if not filename.endswith(suffix):
        return False
    parts = filename[: -len(suffix)].rsplit(".", 1)
    return (len(parts) == 2 and len(parts[1]) == 40
            and all(c in "0123456789abcdef" for c in parts[1]))


def next_crl_number(layout_crl: Path, info: CrlInfo | None) -> int:
    """One more than the last CRL we know of: the index's, or the file's if a crash left it newer.
    """
    number = info.number if info else 0
    try:
        on_disk = crl_number(x509.load_pem_x509_crl(layout_crl.read_bytes()))
    except (FileNotFoundError, ValueError):
        on_disk = 0
    return max(number, on_disk) + 1


def write_crl(path: Path, issuer_cert: x509.Certificate,
              issuer_key: CertificateIssuerPrivateKeyTypes,
              entries: list[RevokedEntry], previous: CrlInfo | None, now: datetime,
              days: int) -> CrlInfo:
    """Sign and atomically write a CRL; return what the index records about it."""
    number = next_crl_number(path, previous)
    crl = build_crl(issuer_cert, issuer_key, entries, number, now, days)
    data = crl.public_bytes(serialization.Encoding.PEM)
    fsio.atomic_write(path, data)
    next_update = crl.next_update_utc
    assert next_update is not None
    return CrlInfo(number, next_update, hashlib.sha256(data).hexdigest())


def leaf_crl_entries(index: Index, now: datetime) -> list[RevokedEntry]:
    """Revoked certificates that have not expired yet (RFC 5280 lets expired ones leave the CRL)."""
    return [
        RevokedEntry(r.serial, r.revoked_at, r.reason or "unspecified")
        for r in index.records
        if r.status == "revoked" and r.revoked_at is not None and r.not_after > now
    ]


def save_index(layout: StateLayout, index: Index) -> None:
    """Commit point: index.json, then its human rendering."""
    fsio.atomic_write(layout.index_json, index.to_json(), fsio.KEY_MODE)
    fsio.atomic_write(layout.index_txt, index.to_txt(), fsio.KEY_MODE)


def remove_files(paths: list[Path]) -> None:
    """Delete files (keys of revoked certificates, leftovers) and make the removal durable."""
    dirs = {p.parent for p in paths}
    for path in paths:
        path.unlink(missing_ok=True)
    for directory in dirs:
        fsio.fsync_dir(directory)
