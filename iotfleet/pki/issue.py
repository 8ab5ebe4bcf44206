"""Batch issuance: fresh keys and certificates for a run, written as one pack of each.

This is the hot path of enrolling a fleet:
- key generation and signing are CPU-bound, so large batches are signed on every core
  (``iotfleet.pki.sign_pool``: this process and fresh worker interpreters over pipes, which
  works inside gevent-patched pyinfra runs too); workers send back only PEM bytes;
- all certificates of a run go into one immutable cert pack and all keys into one 0600 key
  pack. Creating 20,000 small files costs seconds on a busy disk and serializes on the directory
  lock; two files cost milliseconds and are made durable with two fsyncs, so reconcile returns
  with every key on disk. The index records each PEM block's offset, so reads stay O(1).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from iotfleet.pki import fsio
from iotfleet.pki.certs import Issuer
from iotfleet.pki.index import IndexRecord, prepare_record
from iotfleet.pki.layout import StateLayout, serial_hex
from iotfleet.pki.sign_pool import CHUNK, SignPool, WireJob
from iotfleet.pki.spec import IdentitySpec, spec_fingerprint

# Below this many jobs starting worker interpreters costs more than it saves.
POOL_THRESHOLD = 1000


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


def wire_job(job: IssueJob) -> WireJob:
    """A job as plain values (what ``LeafSigner.issue`` and the workers take)."""
    spec = job.spec
    return (
        spec.name,
        spec.kind,
        spec.key_type,
        spec.dns_names,
        spec.ip_addresses,
        job.serial,
        job.not_before,
        job.not_after,
        job.key_pem,
        job.public_key_pem,
    )


def worker_count(requested: int | None) -> int:
    """Processes to use: the setting, else one per CPU this process may run on."""
    if requested is not None:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _processes(jobs: int, workers: int | None) -> int:
    """Processes worth using for ``jobs`` jobs (1: sign here only)."""
    if jobs < POOL_THRESHOLD:
        return 1
    return min(worker_count(workers), max(1, jobs // CHUNK))


def start_workers(expected_jobs: int, workers: int | None) -> SignPool | None:
    """Worker interpreters started now (they boot while the run plans), if a batch of
    ``expected_jobs`` is worth them; hand the pool to ``sign_batch`` and close it after."""
    processes = _processes(expected_jobs, workers)
    return SignPool(processes - 1) if processes >= 2 else None


Consumer = Callable[[int, Sequence[tuple[bytes, bytes]]], None]


def sign_batch(
    jobs: Sequence[IssueJob],
    issuer: Issuer,
    workers: int | None = None,
    *,
    pool: SignPool | None = None,
    consume: Consumer | None = None,
) -> list[tuple[bytes, bytes]]:
    """(certificate PEM, key PEM) for every job, in job order. Writes nothing.

    ``pool``: workers started earlier (``start_workers``), else started here for a large batch.
    ``consume(start, pairs)``: called with the results in job order, chunk by chunk, while the
    rest is still being signed (``PackBuilder.add``).

    Raises:
        SigningWorkerError: a worker process failed (nothing is written).
    """
    wire = [wire_job(job) for job in jobs]
    signer = issuer.signer()
    if pool is None and issuer.certificate is not None and _processes(len(jobs), workers) >= 2:
        with SignPool(_processes(len(jobs), workers) - 1) as fresh:
            return fresh.sign(wire, issuer, signer.issue, consume)
    if pool is not None and issuer.certificate is not None and len(jobs) > CHUNK:
        return pool.sign(wire, issuer, signer.issue, consume)
    pairs = [signer.issue(job) for job in wire]
    if consume is not None:
        consume(0, pairs)
    return pairs


def new_pack_name(now: datetime) -> str:
    """Sortable by time, unique by a random suffix (two runs in one second never collide)."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


class PackBuilder:
    """The cert pack and key pack of one run and their index records, built as results come in
    (``add`` is a ``sign_batch`` consumer), written by ``write``."""

    def __init__(self, pack: str, jobs: Sequence[IssueJob]) -> None:
        self.pack = pack
        self.jobs = jobs
        self.records: list[IndexRecord] = []
        self._certs: list[bytes] = []
        self._keys: list[bytes] = []
        self._cert_at = self._key_at = 0

    def add(self, start: int, pems: Sequence[tuple[bytes, bytes]]) -> None:
        """Results for ``jobs[start:start + len(pems)]`` (in order, right after the last ones)."""
        assert start == len(self.records), "results out of order"
        for job, (cert_pem, key_pem) in zip(
            self.jobs[start : start + len(pems)], pems, strict=True
        ):
            label = f"# {job.spec.name} serial {serial_hex(job.serial)} {job.spec.kind}\n".encode()
            self._cert_at += len(label)
            self._certs += (label, cert_pem)
            if key_pem:
                self._key_at += len(label)
                self._keys += (label, key_pem)
            key_span = (self._key_at, len(key_pem)) if key_pem else (0, 0)  # (0, 0): on board
            record = IndexRecord(
                name=job.spec.name,
                kind=job.spec.kind,
                serial=job.serial,
                subject=f"CN={job.spec.name}",
                key_type=job.spec.key_type,
                spec=spec_fingerprint(job.spec),
                not_before=job.not_before,
                not_after=job.not_after,
                status="valid",
                pack=self.pack,
                cert_span=(self._cert_at, len(cert_pem)),
                key_span=key_span,
            )
            prepare_record(record)  # its index line, now, while workers are still signing
            self.records.append(record)
            self._cert_at += len(cert_pem)
            self._key_at += len(key_pem)

    def write(self, layout: StateLayout) -> list[IndexRecord]:
        """Write the cert pack and the key pack (new files, durable); return the records."""
        assert len(self.records) == len(self.jobs), "not every job has its certificate"
        if self._keys:  # none when every certificate is for a key made on its board
            fsio.create_exclusive_durable(
                layout.key_pack(self.pack), b"".join(self._keys), fsio.KEY_MODE
            )
        fsio.create_exclusive_durable(
            layout.cert_pack(self.pack), b"".join(self._certs), fsio.PUBLIC_MODE
        )
        return self.records
