"""Concurrent runs serialize; the attack-test helpers produce identities that must fail."""

from __future__ import annotations

import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import VerificationError

from iotfleet.pki import IdentitySpec, PkiStore, reconcile
from iotfleet.pki.index import load_index
from iotfleet.pki.issue import POOL_THRESHOLD
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.testing import make_expired_identity, make_foreign_ca_identity
from tests.unit.pki_helpers import ENV, FLEET, PASSPHRASE, openssl_verify, settings_for, verify_leaf

DEVICES = tuple(IdentitySpec(f"gw-{i:04d}", "device") for i in range(60))


def _run(state_dir: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    os.environ[ENV] = PASSPHRASE
    barrier.wait()
    reconcile(settings_for(Path(state_dir)), DEVICES)


def test_two_concurrent_reconciles_issue_each_identity_once(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    context = multiprocessing.get_context("spawn")  # fresh interpreters: a real second process
    barrier = context.Barrier(2)
    workers = [context.Process(target=_run, args=(str(state), barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    layout = StateLayout(state)
    index = load_index(layout)
    assert len(index.records) == len(DEVICES)  # one issuance per name, nothing revoked
    assert {r.name for r in index.records} == {s.name for s in DEVICES}
    assert len({record.pack for record in index.records}) == 1  # one run issued, the other saw it
    assert len(list(layout.packs_dir.iterdir())) == 2
    store = PkiStore(state)
    for record in index.records:
        cert = x509.load_pem_x509_certificate(store.certificate_pem(record.name))
        assert cert.serial_number == record.serial


def test_large_batch_uses_the_process_pool_and_stays_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)
    state = tmp_path / "pki"
    count = POOL_THRESHOLD + 100  # large enough for the worker pool
    specs = tuple(IdentitySpec(f"dev-{i:05d}", "device") for i in range(count))
    report = reconcile(settings_for(state, workers=2), specs)
    assert len(report.issued) == count
    store = PkiStore(state)
    now = datetime.now(UTC)
    root = x509.load_pem_x509_certificate(store.root_certificate_pem())
    intermediate = x509.load_pem_x509_certificates(store.ca_chain_pem())[0]
    last = f"dev-{count - 1:05d}"
    for name in ("dev-00000", last):
        verify_leaf(
            x509.load_pem_x509_certificate(store.certificate_pem(name)), root, intermediate, now
        )
    key = serialization.load_pem_private_key(store.private_key_pem(last), None)
    cert = x509.load_pem_x509_certificate(store.certificate_pem(last))
    assert key.public_key() == cert.public_key()
    assert not reconcile(settings_for(state, workers=2), specs).changed


def test_foreign_and_expired_identities_fail_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)
    state = tmp_path / "pki"
    reconcile(settings_for(state), FLEET)
    store = PkiStore(state)
    root = x509.load_pem_x509_certificate(store.root_certificate_pem())
    intermediate = x509.load_pem_x509_certificates(store.ca_chain_pem())[0]
    now = datetime.now(UTC)

    foreign = make_foreign_ca_identity("gw-0001")
    foreign_cert = x509.load_pem_x509_certificate(foreign.certificate_pem)
    assert foreign_cert.issuer == intermediate.subject  # same names, different keys
    with pytest.raises(VerificationError):
        verify_leaf(foreign_cert, root, intermediate, now)
    assert openssl_verify(tmp_path / "v", store, foreign.certificate_pem).returncode != 0
    # ... while it is internally consistent (valid under its own CA).
    foreign_chain = x509.load_pem_x509_certificates(foreign.ca_chain_pem)
    verify_leaf(foreign_cert, foreign_chain[1], foreign_chain[0], now)

    before = sorted(p.name for p in state.rglob("*"))
    expired = make_expired_identity(settings_for(state), "gw-0001")
    assert sorted(p.name for p in state.rglob("*")) == before  # nothing recorded
    expired_cert = x509.load_pem_x509_certificate(expired.certificate_pem)
    assert expired_cert.not_valid_after_utc < now
    with pytest.raises(VerificationError):
        verify_leaf(expired_cert, root, intermediate, now)
    result = openssl_verify(tmp_path / "v", store, expired.certificate_pem)
    assert result.returncode != 0 and "expired" in result.stdout + result.stderr
    # It really is signed by the fleet's intermediate: expiry is the only thing wrong with it.
    expired_cert.verify_directly_issued_by(intermediate)
    assert expired.not_after == expired_cert.not_valid_after_utc
