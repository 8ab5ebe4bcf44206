"""Batch issuance: for each job, a fresh key and a certificate, written as two new files.

This is the hot path of enrolling a fleet. Key generation and signing are CPU-bound, so large
batches are split over a fork()ed process pool (the workers inherit the decrypted intermediate
key through fork instead of receiving it through a pipe). Files are created exclusively and not
fsynced one by one; the caller makes the whole batch durable with one sync before it commits
the index.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from iotfleet.pki import fsio
from iotfleet.pki.certs import Issuer, build_leaf, public_key_of
from iotfleet.pki.keys import generate_key, plain_key_pem
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.spec import IdentitySpec

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


# Set in the parent right before the pool forks; read by the workers.
_WORKER_CONTEXT: tuple[Issuer, StateLayout] | None = None


def _issue_one(job: IssueJob, issuer: Issuer, layout: StateLayout) -> None:
    key = generate_key(job.spec.key_type)
    cert = build_leaf(job.spec, public_key_of(key), issuer, job.serial, job.not_before,
                      job.not_after)
    fsio.create_exclusive(layout.key_path(job.spec.name, job.serial), plain_key_pem(key),
                          fsio.KEY_MODE)
    fsio.create_exclusive(layout.cert_path(job.spec.name, job.serial),
                          cert.public_bytes(serialization.Encoding.PEM), fsio.PUBLIC_MODE)


def _issue_chunk(jobs: Sequence[IssueJob]) -> int:
    assert _WORKER_CONTEXT is not None
    issuer, layout = _WORKER_CONTEXT
    for job in jobs:
        _issue_one(job, issuer, layout)
    return len(jobs)


def worker_count(requested: int | None) -> int:
    """Processes to use: the setting, else one per CPU this process may run on."""
    if requested is not None:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def issue_batch(jobs: Sequence[IssueJob], issuer: Issuer, layout: StateLayout,
                workers: int | None = None) -> list[Path]:
    """Create key + certificate files for every job; return the created paths (not yet synced)."""
    global _WORKER_CONTEXT
    processes = min(worker_count(workers), max(1, len(jobs) // _CHUNK))
    use_pool = (processes > 1 and len(jobs) >= POOL_THRESHOLD
                and "fork" in multiprocessing.get_all_start_methods())
    if use_pool:
        chunks = [jobs[i:i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
        _WORKER_CONTEXT = (issuer, layout)
        try:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                done = sum(pool.imap_unordered(_issue_chunk, chunks))
        finally:
            _WORKER_CONTEXT = None
        assert done == len(jobs)
    else:
        for job in jobs:
            _issue_one(job, issuer, layout)
    paths: list[Path] = []
    for job in jobs:
        paths.append(layout.key_path(job.spec.name, job.serial))
        paths.append(layout.cert_path(job.spec.name, job.serial))
    return paths
