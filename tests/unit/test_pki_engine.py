"""PKI engine: issuance, chains, renewal, revocation, CRL, idempotence, root offline."""

from __future__ import annotations

import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import VerificationError

from iotfleet.pki import (
    IdentitySpec,
    NotIssuedError,
    PkiStore,
    RootKeyOfflineError,
    reconcile,
    renew_intermediate,
    revoke,
    status,
)
from tests.unit.pki_helpers import (
    BROKER,
    CLIENT,
    DEVICE,
    ENV,
    FLEET,
    PASSPHRASE,
    ip_target,
    openssl_verify,
    settings_for,
    snapshot,
    verify_leaf,
    verify_with_cryptography,
)

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "pki"


def _crl(store: PkiStore) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(store.crl_pem())


def _cert(store: PkiStore, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(store.certificate_pem(name))


def test_first_run_creates_ca_and_every_identity_with_safe_modes(state: Path) -> None:
    report = reconcile(settings_for(state), FLEET, now=T0)
    assert report.ca_created and report.changed
    assert set(report.issued) == {"broker-1", "gw-0001", "ops.alice"}
    store = PkiStore(state)
    for path in [state, state / "ca", state / "packs"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    keys = [
        *(state / "packs").glob("*.keys.pem"),
        state / "ca/root.key",
        state / "ca/intermediate.key",
    ]
    assert len(keys) == 3  # one key pack for the run + the two CA keys
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert b"ENCRYPTED PRIVATE KEY" in (state / "ca/root.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in (state / "ca/intermediate.key").read_bytes()
    device_key = serialization.load_pem_private_key(store.private_key_pem("gw-0001"), None)
    assert isinstance(device_key, ec.EllipticCurvePrivateKey)
    assert device_key.public_key() == _cert(store, "gw-0001").public_key()
    assert "gw-0001" in (state / "index.txt").read_text()


def test_certificate_profile(state: Path) -> None:
    reconcile(settings_for(state), FLEET, now=T0)
    store = PkiStore(state)
    root, intermediate = (
        x509.load_pem_x509_certificate(store.root_certificate_pem()),
        x509.load_pem_x509_certificates(store.ca_chain_pem())[0],
    )
    bc = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = intermediate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    broker = _cert(store, "broker-1")
    assert broker.not_valid_before_utc == T0 - timedelta(minutes=5)  # backdated for skew
    assert broker.serial_number.bit_length() <= 159 and broker.serial_number > 2**100
    assert not broker.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert broker.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    aki = broker.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    eku = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker1.lan"]
    device = _cert(store, "gw-0001")
    assert device.subject.rfc4514_string() == "CN=gw-0001"
    eku = device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_chains_verify_with_cryptography_and_openssl(state: Path, tmp_path: Path) -> None:
    reconcile(settings_for(state), FLEET)  # real clock: openssl checks against it
    store = PkiStore(state)
    now = datetime.now(UTC)
    for spec in FLEET:
        verify_with_cryptography(store, spec.name, now)
        result = openssl_verify(tmp_path / "v", store, store.certificate_pem(spec.name))
        assert result.returncode == 0, result.stdout + result.stderr
        result = openssl_verify(
            tmp_path / "v", store, store.certificate_pem(spec.name), crl_check_all=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
    root = x509.load_pem_x509_certificate(store.root_certificate_pem())
    intermediate = x509.load_pem_x509_certificates(store.ca_chain_pem())[0]
    from cryptography.x509.verification import PolicyBuilder, Store

    verifier = PolicyBuilder().store(Store([root])).time(now)
    verifier.build_server_verifier(ip_target("192.0.2.10")).verify(
        _cert(store, "broker-1"), [intermediate]
    )
    with pytest.raises(VerificationError):  # SAN is checked
        verify_leaf(_cert(store, "broker-1"), root, intermediate, now, server_name="evil.lan")


def test_revoked_certificate_fails_openssl_crl_check(state: Path, tmp_path: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET)
    store = PkiStore(state)
    old_pem = store.certificate_pem("gw-0001")
    record = revoke(settings, "gw-0001", "keyCompromise")
    result = openssl_verify(tmp_path / "v", store, old_pem)
    assert result.returncode != 0 and "revoked" in (result.stdout + result.stderr)
    crl = _crl(store)
    entry = crl.get_revoked_certificate_by_serial_number(record.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    # Revoke-and-reissue: the inventory still lists it, so the next run issues a new identity.
    with pytest.raises(NotIssuedError):
        store.certificate_pem("gw-0001")
    report = reconcile(settings, FLEET)
    assert report.issued == ("gw-0001",)
    new_pem = store.certificate_pem("gw-0001")
    assert new_pem != old_pem
    assert openssl_verify(tmp_path / "v", store, new_pem).returncode == 0


def test_second_reconcile_changes_nothing_byte_for_byte(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    before = snapshot(state)
    report = reconcile(settings, FLEET, now=T0 + timedelta(hours=1))
    assert not report.changed, report
    assert snapshot(state) == before


def test_renewal_inside_window_supersedes_and_revokes_old(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    old = store.record("broker-1")
    assert old is not None
    outside = old.not_after - timedelta(days=settings.renew_before_days + 1)
    assert not reconcile(settings, FLEET, now=outside).renewed
    inside = old.not_after - timedelta(days=settings.renew_before_days - 1)
    report = reconcile(settings, FLEET, now=inside)
    assert "broker-1" in report.renewed and report.crl_changed
    assert "broker-1" not in report.revoked  # superseded, not removed
    new = store.record("broker-1")
    assert new is not None and new.serial != old.serial and new.not_after > old.not_after
    revoked = next(r for r in store.records() if r.serial == old.serial)
    assert revoked.status == "revoked" and revoked.reason == "superseded"
    entry = _crl(store).get_revoked_certificate_by_serial_number(old.serial)
    assert entry is not None
    # Only the renewed broker's key pack is still needed; the first run's pack keeps the others.
    assert len(list((state / "packs").glob("*.keys.pem"))) == 2
    verify_with_cryptography(store, "broker-1", inside)


def test_changed_sans_or_key_type_reissue(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    changed_broker = IdentitySpec(
        "broker-1", "broker", dns_names=("broker1.lan", "mqtt.lan"), ip_addresses=("192.0.2.10",)
    )
    rsa_device = IdentitySpec("gw-0001", "device", key_type="rsa-2048")
    report = reconcile(settings, (changed_broker, rsa_device, CLIENT), now=T0)
    assert set(report.renewed) == {"broker-1", "gw-0001"}
    store = PkiStore(state)
    san = (
        _cert(store, "broker-1")
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.DNSName) == ["broker1.lan", "mqtt.lan"]
    assert isinstance(_cert(store, "gw-0001").public_key(), rsa.RSAPublicKey)
    ku = _cert(store, "gw-0001").extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment
    verify_with_cryptography(store, "gw-0001", T0)


def test_removed_and_marked_identities_are_revoked_with_their_reasons(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    crl_before = _crl(store)
    serials = {spec.name: store.record(spec.name).serial for spec in FLEET}  # type: ignore[union-attr]
    marked = IdentitySpec("ops.alice", "client", revoked_reason="affiliationChanged")
    t1 = T0 + timedelta(days=1)
    report = reconcile(settings, (BROKER, marked), now=t1)
    assert set(report.revoked) == {"gw-0001", "ops.alice"} and not report.issued
    crl = _crl(store)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    number_before = crl_before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == number_before + 1
    assert crl.next_update_utc == t1 + timedelta(days=settings.crl_days)
    reasons = {
        entry.serial_number: entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        for entry in crl
    }
    assert reasons == {
        serials["gw-0001"]: x509.ReasonFlags.cessation_of_operation,
        serials["ops.alice"]: x509.ReasonFlags.affiliation_changed,
    }
    # A marked identity stays revoked: later runs neither re-issue nor touch it.
    assert not reconcile(settings, (BROKER, marked), now=t1).changed
    record = store.record("ops.alice")
    assert record is not None and record.status == "revoked"
    removed = store.record("gw-0001")
    assert removed is not None and removed.reason == "cessationOfOperation"


def test_crl_is_resigned_before_next_update_without_other_change(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    number = _crl(store).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    early = T0 + timedelta(days=settings.crl_days - settings.crl_refresh_before_days - 1)
    assert not reconcile(settings, FLEET, now=early).changed
    late = T0 + timedelta(days=settings.crl_days - settings.crl_refresh_before_days + 0.5)
    assert status(settings, now=late).needs_attention
    report = reconcile(settings, FLEET, now=late)
    assert report.crl_changed and not (report.issued or report.renewed or report.revoked)
    crl = _crl(store)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert crl.next_update_utc == late.replace(microsecond=0) + timedelta(days=settings.crl_days)
    assert not status(settings, now=late).needs_attention


def test_status_reports_days_left_and_attention(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    report = status(settings, now=T0)
    assert not report.needs_attention
    kinds = [row.kind for row in report.rows]
    assert kinds[:4] == ["root-ca", "intermediate-ca", "crl", "root-crl"]
    device = next(row for row in report.rows if row.name == "gw-0001")
    assert device.days_left == settings.device_days
    later = T0 + timedelta(days=settings.client_days - 10)
    report = status(settings, now=later)
    assert report.needs_attention
    assert {row.name for row in report.attention_rows} >= {"broker-1", "ops.alice"}


def test_root_offline_daily_work_continues_and_intermediate_renewal_asks_for_root(
    state: Path, tmp_path: Path
) -> None:
    settings = settings_for(state)
    reconcile(settings, (BROKER, DEVICE), now=T0)
    offline = tmp_path / "offline-root.key"
    shutil.move(state / "ca" / "root.key", offline)
    # Issue, renew, revoke, CRL refresh: all without the root key.
    report = reconcile(settings, FLEET, now=T0 + timedelta(days=6))
    assert report.issued == ("ops.alice",) and report.crl_changed
    revoke(settings, "ops.alice", "keyCompromise", now=T0 + timedelta(days=6))
    assert not status(settings, now=T0 + timedelta(days=6)).root_key_online
    with pytest.raises(RootKeyOfflineError, match=r"root\.key is not there"):
        renew_intermediate(settings, now=T0 + timedelta(days=7))
    shutil.move(offline, state / "ca" / "root.key")
    store = PkiStore(state)
    device_pem = store.certificate_pem("gw-0001")
    renewed_until = renew_intermediate(settings, now=T0 + timedelta(days=7))
    intermediate = x509.load_pem_x509_certificates(store.ca_chain_pem())[0]
    assert intermediate.not_valid_after_utc == renewed_until
    root = x509.load_pem_x509_certificate(store.root_certificate_pem())
    # Same key, same SKI: a leaf issued under the old intermediate cert chains to the new one.
    verify_leaf(
        x509.load_pem_x509_certificate(device_pem), root, intermediate, T0 + timedelta(days=8)
    )


def test_intermediate_is_recertified_automatically_when_root_online(state: Path) -> None:
    settings = settings_for(state, intermediate_days=400, intermediate_renew_before_days=100)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    device = store.record("gw-0001")
    assert device is not None and device.not_after <= T0 + timedelta(days=400)  # capped
    report = reconcile(settings, FLEET, now=T0 + timedelta(days=301))
    assert report.intermediate_renewed and report.root_crl_changed
    verify_with_cryptography(store, "broker-1", T0 + timedelta(days=301))


def test_leftovers_of_an_interrupted_run_are_removed(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    orphan = state / "packs" / "20300115T120000Z-deadbeef.keys.pem"
    orphan.write_bytes(b"half-written by a crashed run")
    (state / "index.txt").unlink()
    report = reconcile(settings, FLEET, now=T0)
    assert report.files_repaired == 2 and not orphan.exists()
    assert (state / "index.txt").exists()
    assert not reconcile(settings, FLEET, now=T0).changed


def test_passphrase_file(state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    secret = tmp_path / "pass"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    settings = settings_for(state, passphrase_file=secret)
    assert reconcile(settings, FLEET, now=T0).ca_created
    monkeypatch.setenv(ENV, PASSPHRASE)
    assert not reconcile(settings_for(state), FLEET, now=T0).changed  # same secret via env


def test_crash_before_the_index_commit_is_recovered(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(state)
    reconcile(settings, (BROKER,), now=T0)

    def crash(*_: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr("iotfleet.pki.reconciler.save_index", crash)
    packs_before = set((state / "packs").glob("*.certs.pem"))
    with pytest.raises(OSError, match="power cut"):
        reconcile(settings, FLEET, now=T0)
    monkeypatch.undo()
    monkeypatch.setenv(ENV, PASSPHRASE)
    # Pack names start with the (frozen) time: find the orphan by difference, not by sorting.
    (orphan,) = set((state / "packs").glob("*.certs.pem")) - packs_before
    orphan_serials = {c.serial_number for c in x509.load_pem_x509_certificates(orphan.read_bytes())}
    report = reconcile(settings, FLEET, now=T0)
    assert set(report.issued) == {"gw-0001", "ops.alice"} and report.crl_changed
    assert any("recorded as revoked" in w for w in report.warnings)
    store = PkiStore(state)
    revoked = {r.serial for r in store.records() if r.status == "revoked"}
    assert revoked == orphan_serials
    crl_serials = {entry.serial_number for entry in _crl(store)}
    assert crl_serials == orphan_serials
    assert not reconcile(settings, FLEET, now=T0).changed


def test_lost_index_with_issued_packs_is_refused(state: Path) -> None:
    from iotfleet.pki import IndexCorruptError

    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    (state / "index.json").unlink()
    (state / "index.txt").unlink()
    before = snapshot(state)
    with pytest.raises(IndexCorruptError, match=r"index\.json is missing .*restore"):
        reconcile(settings, FLEET, now=T0)
    assert snapshot(state) == before


def test_expired_intermediate_is_repaired_by_renew_intermediate(state: Path) -> None:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    later = T0 + timedelta(days=settings.intermediate_days + 3)
    renewed_until = renew_intermediate(settings, now=later)
    assert renewed_until > later
    report = reconcile(settings, FLEET, now=later)
    assert set(report.renewed) == {"broker-1", "gw-0001", "ops.alice"}  # they had expired
    verify_with_cryptography(PkiStore(state), "gw-0001", later)
