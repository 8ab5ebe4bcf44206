"""Batch issuance: fresh keys and certificates for a run, written as one pack of each.

This is the hot path of enrolling a fleet:
- key generation and signing are CPU-bound, so large batches are split over a fork()ed process
  pool (workers inherit the decrypted intermediate key through fork, never through a pipe, and
  send back only PEM bytes);
- all certificates of a run go into one immutable cert pack and all keys into one 0600 key
  pack. Creating 20,000 small files costs seconds on a busy disk and serializes on the directory
  lock; two files cost milliseconds and are made durable with two fsyncs, so reconcile returns
  with every key on disk. The index records each PEM block's offset, so reads stay O(1).
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization

from iotfleet.pki import fsio
from iotfleet.pki.certs import Issuer, build_leaf, public_key_of
from iotfleet.pki.index import IndexRecord
from iotfleet.pki.keys import generate_key, plain_key_pem
from iotfleet.pki.layout import StateLayout, serial_hex
from iotfleet.pki.spec import IdentitySpec, spec_fingerprint

# Below this many jobs a pool costs more (fork + pickling) than it saves.
POOL_THRESHOLD = 200
_CHUNK = 250


@dataclass(frozen=True)
class IssueJob:
    """One certificate to issue; serial and validity are decided by the caller (the plan)."""

    spec: IdentitySpec
    serial: int
    not_before: datetime
    not_after: datetime
    # Renewal on the same key: the key PEM of the certificate being renewed (None: a new key).
    key_pem: bytes | None = field(default=None, repr=False)
    # A key the PKI never sees (a gateway's CSR, re-key over the air): its public key PEM. The
    # certificate is issued for it and nothing goes to the key pack.
    public_key_pem: bytes | None = None


# Set in the parent right before the pool forks; read by the workers.
_WORKER_ISSUER: Issuer | None = None


def _issue_one(job: IssueJob, issuer: Issuer) -> tuple[bytes, bytes]:
    if job.public_key_pem is not None:
        public = serialization.load_pem_public_key(job.public_key_pem)
        cert = build_leaf(
            job.spec,
            public,  # type: ignore[arg-type]
            issuer,
            job.serial,
            job.not_before,
            job.not_after,
        )
        return cert.public_bytes(serialization.Encoding.PEM), b""
    if job.key_pem is not None:
        key = serialization.load_pem_private_key(job.key_pem, password=None)
        key_pem = job.key_pem
    else:
        key = generate_key(job.spec.key_type)
        key_pem = plain_key_pem(key)
    cert = build_leaf(
        job.spec,
        public_key_of(key),  # type: ignore[arg-type]
        issuer,
        job.serial,
        job.not_before,
        job.not_after,
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _issue_chunk(jobs: Sequence[IssueJob]) -> list[tuple[bytes, bytes]]:
    assert _WORKER_ISSUER is not None
    return [_issue_one(job, _WORKER_ISSUER) for job in jobs]


def worker_count(requested: int | None) -> int:
    """Processes to use: the setting, else one per CPU this process may run on."""
    if requested is not None:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _under_gevent() -> bool:
    """pyinfra runs on gevent; a multiprocessing pool in a monkey-patched process can hang."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def sign_batch(
    jobs: Sequence[IssueJob], issuer: Issuer, workers: int | None = None
) -> list[tuple[bytes, bytes]]:
    """(certificate PEM, key PEM) for every job, in job order. Writes nothing."""
    global _WORKER_ISSUER
    processes = min(worker_count(workers), max(1, len(jobs) // _CHUNK))
    if (
        processes < 2
        or len(jobs) < POOL_THRESHOLD
        or _under_gevent()
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return [_issue_one(job, issuer) for job in jobs]
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    _WORKER_ISSUER = issuer
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_issue_chunk, chunks)
    finally:
        _WORKER_ISSUER = None
    return [pair for chunk in results for pair in chunk]


def new_pack_name(now: datetime) -> str:
    """Sortable by time, unique by a random suffix (two runs in one second never collide)."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def write_pack(
    layout: StateLayout, pack: str, jobs: Sequence[IssueJob], pems: Sequence[tuple[bytes, bytes]]
) -> list[IndexRecord]:
    """Write the cert pack and the key pack (new files, durable); return the index records."""
    certs: list[bytes] = []
    keys: list[bytes] = []
    cert_at = key_at = 0
    records: list[IndexRecord] = []
    for job, (cert_pem, key_pem) in zip(jobs, pems, strict=True):
        label = f"# {job.spec.name} serial {serial_hex(job.serial)} {job.spec.kind}\n".encode()
        cert_at += len(label)
        certs += (label, cert_pem)
        if key_pem:
            key_at += len(label)
            keys += (label, key_pem)
        key_span = (key_at, len(key_pem)) if key_pem else (0, 0)  # (0, 0): the board's key
        records.append(
            IndexRecord(
                name=job.spec.name,
                kind=job.spec.kind,
                serial=job.serial,
                subject=f"CN={job.spec.name}",
                key_type=job.spec.key_type,
                spec=spec_fingerprint(job.spec),
                not_before=job.not_before,
                not_after=job.not_after,
                status="valid",
                pack=pack,
                cert_span=(cert_at, len(cert_pem)),
                key_span=key_span,
            )
        )
        cert_at += len(cert_pem)
        key_at += len(key_pem)
    if keys:  # none when every certificate is for a key made on its board
        fsio.create_exclusive_durable(layout.key_pack(pack), b"".join(keys), fsio.KEY_MODE)
    fsio.create_exclusive_durable(layout.cert_pack(pack), b"".join(certs), fsio.PUBLIC_MODE)
    return records
