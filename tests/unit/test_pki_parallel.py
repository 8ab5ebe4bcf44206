"""Enrollment on every core: worker interpreters over pipes, the same state as one process,
a failed worker leaves nothing behind, and it works in a gevent-patched (pyinfra) process."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotfleet.pki import IdentitySpec, PkiStore, leaf, reconcile, sign_pool
from iotfleet.pki.ca import create_ca, issuer_from
from iotfleet.pki.certs import build_leaf
from iotfleet.pki.errors import SigningWorkerError
from iotfleet.pki.index import IndexRecord, _canonical, _canonical_record, _record_dict, load_index
from iotfleet.pki.issue import POOL_THRESHOLD, IssueJob, sign_batch
from iotfleet.pki.keys import generate_key
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.spec import PkiSettings
from tests.unit.pki_helpers import (
    BROKER,
    CLIENT,
    ENV,
    PASSPHRASE,
    settings_for,
    snapshot,
    verify_leaf,
)

REPO = Path(__file__).resolve().parents[2]
DEVICES = tuple(IdentitySpec(f"gw-{i:05d}", "device") for i in range(POOL_THRESHOLD + 200))
FLEET = (BROKER, CLIENT, *DEVICES)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


def _workers_started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the pool (it still starts its real workers): how many each pool started."""
    started: list[int] = []
    real = sign_pool.SignPool.__init__

    def spy(self: sign_pool.SignPool, count: int) -> None:
        real(self, count)
        started.append(len(self.workers))

    monkeypatch.setattr(sign_pool.SignPool, "__init__", spy)
    return started


def _profile(cert: x509.Certificate) -> tuple[object, ...]:
    """Everything of a leaf but its key, serial and signature."""
    return (
        cert.subject,
        cert.issuer,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        [(e.oid, e.critical) for e in cert.extensions],
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value,
        cert.extensions.get_extension_for_class(x509.KeyUsage).value,
    )


def _check_state(state: Path, at: datetime) -> dict[str, tuple[object, ...]]:
    """Every identity verifies, its key matches, the index lists each once; their profiles."""
    store = PkiStore(state)
    root = x509.load_pem_x509_certificate(store.root_certificate_pem())
    intermediate = x509.load_pem_x509_certificates(store.ca_chain_pem())[0]
    index = load_index(StateLayout(state))
    assert sorted(r.name for r in index.records) == sorted(s.name for s in FLEET)
    assert {r.status for r in index.records} == {"valid"}
    profiles = {}
    for record in index.records:
        cert = x509.load_pem_x509_certificate(store.certificate_pem(record.name))
        verify_leaf(cert, root, intermediate, at)
        key = serialization.load_pem_private_key(store.private_key_pem(record.name), None)
        assert key.public_key() == cert.public_key()
        assert cert.serial_number == record.serial
        profiles[record.name] = _profile(cert)
    return profiles


def test_parallel_enrollment_persists_what_one_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _workers_started(monkeypatch)
    now = datetime(2030, 1, 15, 12, tzinfo=UTC)
    serial_state, parallel_state = tmp_path / "serial", tmp_path / "parallel"
    assert len(reconcile(settings_for(serial_state, workers=1), FLEET, now=now).issued) == len(
        FLEET
    )
    assert started == []  # one process: no worker
    report = reconcile(settings_for(parallel_state, workers=2), FLEET, now=now)
    assert len(report.issued) == len(FLEET)
    assert started == [1]  # one worker interpreter beside this process
    assert _check_state(serial_state, now) == _check_state(parallel_state, now)
    for state in (serial_state, parallel_state):
        packs = sorted(p.name.split(".", 1)[1] for p in (state / "packs").iterdir())
        assert packs == ["certs.pem", "keys.pem"]  # one pack of each, durable like before
        key_pack = next((state / "packs").glob("*.keys.pem"))
        assert key_pack.stat().st_mode & 0o777 == 0o600
    assert not reconcile(settings_for(parallel_state, workers=2), FLEET, now=now).changed


def _slow_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process signs slowly (it still signs), so on a loaded machine it cannot finish the
    whole batch itself, taking the failing worker's chunks over, before the failure arrives."""
    real = leaf.LeafSigner.issue

    def slow(self: leaf.LeafSigner, job: sign_pool.WireJob) -> tuple[bytes, bytes]:
        time.sleep(0.01)
        return real(self, job)

    monkeypatch.setattr(leaf.LeafSigner, "issue", slow)


def _fake_worker(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Workers that run ``code`` instead of the real one (which never fails on its own)."""
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    monkeypatch.setattr(sign_pool, "worker_command", lambda: argv)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("import os; os.read(0, 4096); os._exit(3)", r"exited with status 3"),
        ("import os, signal; os.read(0, 4096); os.kill(os.getpid(), signal.SIGKILL)",
         r"was killed by signal 9"),
        ("import sys; sys.stdin.buffer.read(4096); raise SystemExit('worker broke: disk gone')",
         r"exited with status 1 .*\(worker broke: disk gone\)"),
    ],
)  # fmt: skip
def test_a_dying_worker_fails_the_run_once_and_leaves_the_state_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, says: str
) -> None:
    state = tmp_path / "pki"
    now = datetime(2030, 1, 15, 12, tzinfo=UTC)
    reconcile(settings_for(state), (BROKER, CLIENT), now=now)
    before = snapshot(state)
    _fake_worker(monkeypatch, code)
    _slow_here(monkeypatch)
    with pytest.raises(SigningWorkerError) as failure:
        reconcile(settings_for(state, workers=2), FLEET, now=now)
    message = str(failure.value)
    assert re.search(says, message), message
    assert "nothing was written, the PKI state is as it was" in message
    assert "\n" not in message and "PRIVATE KEY" not in message
    pid = int(re.search(r"pid (\d+)", message).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not left running
    assert snapshot(state) == before  # not a file more, less or changed
    monkeypatch.undo()
    monkeypatch.setenv(ENV, PASSPHRASE)
    assert len(reconcile(settings_for(state, workers=2), FLEET, now=now).issued) == len(DEVICES)


def test_a_worker_failing_on_a_job_names_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2030, 1, 15, 12, tzinfo=UTC)
    new_ca = create_ca(PkiSettings(state_dir=tmp_path), now)
    issuer = issuer_from(new_ca.intermediate_key, new_ca.certs.intermediate)
    jobs = [IssueJob(spec, 1000 + n, now, now + timedelta(days=30)) for n, spec in
            enumerate(DEVICES)]  # fmt: skip
    # The first chunk goes to the worker (this process signs from the end): a CSR key that
    # is not a key.
    jobs[0] = IssueJob(DEVICES[0], 999, now, now + timedelta(days=30), public_key_pem=b"junk")
    _slow_here(monkeypatch)
    with pytest.raises(SigningWorkerError, match=r"signing worker pid \d+ .*\(ValueError: "):
        sign_batch(jobs, issuer, workers=2)


def test_enrollment_uses_the_workers_in_a_gevent_patched_process(tmp_path: Path) -> None:
    """As inside ``pyinfra``: the process is monkey-patched before anything is imported."""
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from iotfleet.pki import IdentitySpec, PkiSettings, PkiStore, reconcile, sign_pool
        started = []
        real = sign_pool.SignPool.__init__
        def spy(self, count):
            real(self, count)
            started.append(len(self.workers))
        sign_pool.SignPool.__init__ = spy
        assert monkey.is_module_patched("threading") and monkey.is_module_patched("select")
        specs = [IdentitySpec(f"gw-{{i:05d}}", "device") for i in range({len(DEVICES)})]
        settings = PkiSettings(state_dir=Path({str(tmp_path / "pki")!r}), workers=2)
        report = reconcile(settings, specs)
        store = PkiStore(settings.state_dir)
        assert store.certificate_pem(specs[-1].name) and store.private_key_pem(specs[0].name)
        print(len(report.issued), started)
        """
    )
    env = {**os.environ, ENV: PASSPHRASE}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(DEVICES)), "[1]"]


def _chained_leaf(
    spec: IdentitySpec,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """The leaf profile with cryptography's chained builder, as iotfleet used to build it."""
    from cryptography.hazmat.primitives import hashes

    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    rsa_key = isinstance(public, rsa.RSAPublicKey)
    usage = x509.KeyUsage(True, False, rsa_key, False, False, False, False, False, False)
    eku = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if spec.kind == "broker"
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.ip_addresses]
    sans = sans or [x509.UniformResourceIdentifier(f"urn:iotfleet:{spec.kind}:{spec.name}")]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("spec", "key_type"),
    [(DEVICES[0], "ec-p256"), (BROKER, "ec-p256"), (CLIENT, "rsa-2048")],
)
def test_the_fast_leaf_signer_signs_the_same_bytes_as_the_chained_builder(
    tmp_path: Path, spec: IdentitySpec, key_type: str
) -> None:
    now = datetime(2030, 1, 15, 12, 30, 7, tzinfo=UTC)
    new_ca = create_ca(PkiSettings(state_dir=tmp_path), now)
    issuer = issuer_from(new_ca.intermediate_key, new_ca.certs.intermediate)
    public = generate_key(key_type).public_key()
    later = now + timedelta(days=825)
    fast = build_leaf(spec, public, issuer, 4242, now, later)
    assert isinstance(new_ca.intermediate_key, ec.EllipticCurvePrivateKey)
    chained = _chained_leaf(
        spec,
        public,
        new_ca.intermediate_key,
        new_ca.certs.intermediate,
        4242,
        now,
        later,
    )
    assert fast.tbs_certificate_bytes == chained.tbs_certificate_bytes


@pytest.mark.parametrize(
    "record",
    [
        IndexRecord("gw-1", "device", 7, "CN=gw-1", "ec-p256", "ab" * 32,
                    datetime(2030, 1, 1, tzinfo=UTC), datetime(2032, 1, 1, tzinfo=UTC), "valid",
                    pack="20300101T000000Z-0a1b2c3d", cert_span=(12, 700), key_span=(12, 241)),
        IndexRecord("gw-2", "device", 2**158, "CN=gw-2", "rsa-2048", "",
                    datetime(2030, 1, 1, tzinfo=UTC), datetime(2032, 1, 1, tzinfo=UTC),
                    "revoked", reason="keyCompromise", revoked_at=datetime(2031, 5, 5, tzinfo=UTC),
                    pack="p", cert_span=(0, 1), key_span=(0, 0)),
        IndexRecord("gw-3", "device", 1, 'CN="quoted" \\ é', "ec-p256", "x",
                    datetime(2030, 1, 1, tzinfo=UTC), datetime(2032, 1, 1, tzinfo=UTC), "retiring",
                    pack="p"),
    ],
)  # fmt: skip
def test_index_lines_are_formatted_as_json_would(record: IndexRecord) -> None:
    assert _canonical_record(record) == _canonical(_record_dict(record))
