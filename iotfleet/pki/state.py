"""Load a state dir as a whole (CA certs, index, file inventory) and write its shared parts.

Shared by reconcile, revoke and renew-intermediate so they agree on what "consistent" means:
every valid index record has its certificate and key file; files no record points at were left
by an interrupted run and are removed; crl.pem is the one the index says it last signed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from iotfleet.fs.stage import active_stage
from iotfleet.pki import fsio
from iotfleet.pki.ca import CaCerts, load_ca_certs, remove_stale_staging
from iotfleet.pki.crl import RevokedEntry, build_crl, crl_number
from iotfleet.pki.errors import IndexCorruptError, StateError
from iotfleet.pki.index import CrlInfo, Index, IndexRecord, load_index, txt_is_current
from iotfleet.pki.keys import key_type_of
from iotfleet.pki.layout import CERT_PACK_SUFFIX, KEY_PACK_SUFFIX, StateLayout
from iotfleet.pki.seal import check_packs, write_seal
from iotfleet.pki.spec import KINDS


@contextlib.contextmanager
def locked_layout(
    state_dir: Path, *, create: bool = False, shared: bool = False
) -> Iterator[StateLayout]:
    """The state dir's layout while holding its lock (exclusive unless ``shared``).

    ``create`` makes the state dir (0700) for a first run; otherwise a missing dir is an error.
    """
    layout = StateLayout(state_dir)
    if create:
        fsio.ensure_dir(layout.root)
    elif not layout.root.is_dir():
        raise StateError(
            f"no PKI state directory at {layout.root} (run a reconcile first, or pass --state-dir)"
        )
    with fsio.state_lock(layout.lock, shared=shared):
        yield layout


@dataclass
class LoadedState:
    """Everything a locked operation needs to decide what to change."""

    layout: StateLayout
    ca: CaCerts | None
    index: Index
    leftovers: list[Path] = field(default_factory=list)  # to remove at the end of a run
    # Cert packs no record points at: a crash before the index commit, or an index restored
    # from an older backup. Reconcile records their certificates as revoked (see adopt_orphans).
    orphan_cert_packs: list[Path] = field(default_factory=list)
    crl_ok: bool = True
    root_crl_ok: bool = True
    # index.txt is missing or renders an earlier index.json (a crash between the two writes of
    # save_index): the run regenerates it.
    txt_missing: bool = False
    # index.json verified in full, not through a seal (none yet, or written by an older
    # iotfleet or a hand): the run writes the seal, so the next one can skip the verification.
    unsealed: bool = False


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
    if (
        ca is not None
        and not layout.index_json.exists()
        and any(layout.packs_dir.glob("*" + CERT_PACK_SUFFIX))
    ):
        raise IndexCorruptError(
            f"{layout.index_json} is missing but {layout.packs_dir} holds issued certificates: "
            "restore index.json from a backup (the engine will not re-issue the whole fleet)"
        )
    stage = active_stage()
    if stage is not None:
        # A planning run: its commit must find the state as it was read here.
        stage.commit_lock = functools.partial(fsio.state_lock, layout.lock)
        for path in (layout.index_json, layout.chain, layout.crl):
            stage.guard(path)
    state = LoadedState(layout, ca, index)
    if ca is None:
        return state
    state.leftovers, state.orphan_cert_packs = _scan_files(layout, index)
    state.crl_ok = index.crl is not None and sha256_file(layout.crl) == index.crl.sha256
    state.root_crl_ok = (
        index.root_crl is not None and sha256_file(layout.root_crl) == index.root_crl.sha256
    )
    if index.seal is not None:
        check_packs(layout, index.seal)  # index.txt is the sealed one: current
    else:
        state.txt_missing = not txt_is_current(layout, index)
        state.unsealed = layout.index_json.exists()
    return state


def _scan_files(layout: StateLayout, index: Index) -> tuple[list[Path], list[Path]]:
    """Check that valid records have their packs; return files left by interrupted runs
    (packs no record points at) and key packs whose certificates are all revoked."""
    cert_end: dict[str, tuple[int, str]] = {}
    key_end: dict[str, tuple[int, str]] = {}
    history: set[str] = set()
    for record in index.records:
        history.add(record.pack)
        if record.status == "revoked":
            continue
        end = sum(record.cert_span)
        if end > cert_end.get(record.pack, (0, ""))[0]:
            cert_end[record.pack] = (end, record.name)
        if record.status != "valid":
            continue  # a retiring certificate's key lives on in its successor's pack
        end = sum(record.key_span)
        if end > key_end.get(record.pack, (0, ""))[0]:
            key_end[record.pack] = (end, record.name)
    leftovers: list[Path] = []
    orphan_certs: list[Path] = []
    sizes: dict[str, int] = {}
    if layout.packs_dir.is_dir():
        with os.scandir(layout.packs_dir) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(CERT_PACK_SUFFIX):
                    keep = name[: -len(CERT_PACK_SUFFIX)] in history  # certs stay as history
                elif name.endswith(KEY_PACK_SUFFIX):
                    keep = name[: -len(KEY_PACK_SUFFIX)] in key_end
                else:
                    keep = not fsio.is_temp_name(name)  # not ours: leave it alone
                if keep:
                    sizes[name] = entry.stat().st_size
                elif name.endswith(CERT_PACK_SUFFIX):
                    orphan_certs.append(Path(entry.path))
                else:
                    leftovers.append(Path(entry.path))
    for needed, path_of in ((cert_end, layout.cert_pack), (key_end, layout.key_pack)):
        for pack, (end, name) in needed.items():
            path = path_of(pack)
            if sizes.get(path.name, -1) < end:
                problem = "is missing" if path.name not in sizes else "is truncated"
                raise IndexCorruptError(
                    f"{path} {problem} but the index lists certificates in it as valid (e.g. "
                    f"{name!r}): restore it from a backup, or revoke those identities "
                    f"(`iotfleet pki revoke {name} --reason keyCompromise`) to have them re-issued"
                )
    # Temp files of writes a crash (or a full disk under an older iotfleet) interrupted: under
    # the lock no other run is writing, so every one of ours is dead.
    for directory in (layout.root, layout.ca_dir):
        if directory.is_dir():
            leftovers += [
                p for p in directory.iterdir() if fsio.is_temp_name(p.name) and p.is_file()
            ]
    remove_stale_staging(layout)
    return leftovers, sorted(orphan_certs)


def dead_key_packs(layout: StateLayout, index: Index, packs: Iterable[str]) -> list[Path]:
    """Key packs among ``packs`` that no valid certificate needs any more (to be removed)."""
    alive = {record.pack for record in index.records if record.status == "valid"}
    return [layout.key_pack(pack) for pack in set(packs) - alive]


_BLOCK_RE = re.compile(
    rb"# (?P<name>[A-Za-z0-9._-]{1,64}) serial (?P<serial>[0-9a-f]{40}) (?P<kind>[a-z]+)\n"
    rb"(?P<pem>-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n)"
)


def adopt_orphans(paths: Iterable[Path], index: Index, now: datetime) -> int:
    """Record the certificates of orphan cert packs as revoked (reason superseded).

    After a crash they were never handed out and revoking them costs nothing; after a restore
    from an older backup they may be in the field, and a certificate the index does not know
    could never be revoked. Returns how many were adopted. Unparseable blocks are skipped.
    """
    adopted = 0
    for path in paths:
        pack = path.name[: -len(CERT_PACK_SUFFIX)]
        data = path.read_bytes()
        for match in _BLOCK_RE.finditer(data):
            try:
                cert = x509.load_pem_x509_certificate(match["pem"])
            except ValueError:
                continue
            name, kind = match["name"].decode(), match["kind"].decode()
            if (
                index.has_serial(cert.serial_number)
                or kind not in KINDS
                or cert.not_valid_after_utc <= now
            ):
                continue
            index.add(
                IndexRecord(
                    name=name,
                    kind=kind,
                    serial=cert.serial_number,
                    subject=f"CN={name}",
                    key_type=key_type_of(cert.public_key()),
                    spec="",
                    status="revoked",
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    reason="superseded",
                    revoked_at=now,
                    pack=pack,
                    cert_span=(match.start("pem"), len(match["pem"])),
                    key_span=(0, 0),
                )
            )
            adopted += 1
    return adopted


def next_crl_number(layout_crl: Path, info: CrlInfo | None) -> int:
    """One more than the last CRL we know of: the index's, or the file's if a crash left it
    newer."""
    number = info.number if info else 0
    try:
        on_disk = crl_number(x509.load_pem_x509_crl(layout_crl.read_bytes()))
    except (FileNotFoundError, ValueError):
        on_disk = 0
    return max(number, on_disk) + 1


def write_crl(
    path: Path,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    entries: list[RevokedEntry],
    previous: CrlInfo | None,
    now: datetime,
    days: int,
) -> CrlInfo:
    """Sign and atomically write a CRL; return what the index records about it."""
    number = next_crl_number(path, previous)
    crl = build_crl(issuer_cert, issuer_key, entries, number, now, days)
    data = crl.public_bytes(serialization.Encoding.PEM)
    fsio.atomic_write(path, data)
    next_update = crl.next_update_utc
    assert next_update is not None
    return CrlInfo(number, next_update, hashlib.sha256(data).hexdigest())


def resign_leaf_crl(
    layout: StateLayout,
    index: Index,
    intermediate: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    now: datetime,
    days: int,
) -> CrlInfo:
    """Sign the intermediate's CRL anew from ``index`` (what it revokes, not yet expired) and
    write it; returns what the index records about it."""
    return write_crl(layout.crl, intermediate, key, leaf_crl_entries(index, now), index.crl, now,
                     days)  # fmt: skip


def read_key_pem(layout: StateLayout, record: IndexRecord) -> bytes:
    """The private key PEM of a valid record, from its key pack (for a same-key renewal)."""
    return _read_pack_block(layout.key_pack(record.pack), record.key_span, record.name, "key",
                            b"-----BEGIN ")  # fmt: skip


def read_cert_pem(layout: StateLayout, record: IndexRecord) -> bytes:
    """The certificate PEM of a record, from its cert pack."""
    return _read_pack_block(layout.cert_pack(record.pack), record.cert_span, record.name,
                            "certificate", b"-----BEGIN CERTIFICATE")  # fmt: skip


def _read_pack_block(path: Path, span: tuple[int, int], name: str, what: str,
                     start: bytes) -> bytes:  # fmt: skip
    offset, length = span
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
    except FileNotFoundError:
        raise StateError(
            f"{path} (holding {name!r}) is missing: restore it from a backup"
        ) from None
    if len(data) != length or not data.startswith(start):
        raise IndexCorruptError(f"{path} does not hold the {what} of {name!r} where the index says")
    return data


def load_devices_doc(path: Path, fmt: str, what: str, remedy: str) -> dict[str, Any] | None:
    """The ``devices`` map of one of the PKI's JSON state files (``format`` checked), None if
    the file does not exist. ``what`` names it in messages, ``remedy`` says how to recover."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path} is not readable JSON ({exc}): {remedy}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != fmt
        or not isinstance(doc.get("devices"), dict)
    ):
        raise StateError(f"{path}: not an iotfleet {what} (expected {fmt!r})")
    devices: dict[str, Any] = doc["devices"]
    return devices


def leaf_crl_entries(index: Index, now: datetime) -> list[RevokedEntry]:
    """Revoked certificates that have not expired yet (RFC 5280 lets expired ones leave the CRL)."""
    return [
        RevokedEntry(r.serial, r.revoked_at, r.reason or "unspecified")
        for r in index.records
        if r.status == "revoked" and r.revoked_at is not None and r.not_after > now
    ]


def save_index(layout: StateLayout, index: Index) -> None:
    """Commit point: index.json, then its human rendering.

    A crash at any point needs no person: before the first rename the old index stands (files
    of the run are adopted or removed by the next one); between the two, index.txt renders the
    earlier index.json, which it names by digest, and the next run regenerates it. The seal
    goes last: until it is written the next run verifies the index in full and seals it.
    """
    index_json, index_txt = index.to_json(), index.to_txt()
    fsio.atomic_write(layout.index_json, index_json, fsio.KEY_MODE)
    fsio.atomic_write(
        layout.index_txt,
        index_txt,
        fsio.KEY_MODE,
        not_done="index.json is committed (this run's changes are kept); index.txt, its view "
        "for people, is regenerated by the next run",
    )
    stage = active_stage()
    write_seal(
        layout,
        index_json,
        index_txt,
        needed_packs(layout, index),
        stage.read_bytes if stage is not None else Path.read_bytes,
    )


def needed_packs(layout: StateLayout, index: Index) -> list[Path]:
    """Pack files the index keeps: every record's cert pack (history), valid records' key
    packs (the others are removed)."""
    certs = {record.pack for record in index.records}
    keys = {r.pack for r in index.records if r.status == "valid" and r.key_span[1]}
    return [layout.cert_pack(p) for p in sorted(certs)] + [layout.key_pack(p) for p in sorted(keys)]


def remove_files(paths: list[Path]) -> None:
    """Delete files (dead key packs, leftovers) and make the removal durable."""
    dirs = {p.parent for p in paths}
    for path in paths:
        fsio.remove(path)
    for directory in dirs:
        fsio.fsync_dir(directory)
