"""Device renewal on the same key (issue 13): the old certificate stays valid until the gateway is
seen using the new one, or until it expires; `pki status` shows issued / delivered / in use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotfleet.pki import PkiStore, reconcile, revoke, status
from iotfleet.pki.delivery import read_ledger, record_observations
from tests.unit.pki_helpers import DEVICE, ENV, FLEET, PASSPHRASE, settings_for

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


def _public(pem: bytes) -> bytes:
    return (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _crl_serials(store: PkiStore) -> set[int]:
    return {entry.serial_number for entry in x509.load_pem_x509_crl(store.crl_pem())}


def _renewed(state: Path) -> tuple[PkiStore, int, int, datetime]:
    """Issue at T0, then reconcile inside the device's renewal window: (store, old, new, when)."""
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    old = store.record(DEVICE.name)
    assert old is not None
    inside = old.not_after - timedelta(days=settings.renew_before_days - 1)
    report = reconcile(settings, FLEET, now=inside)
    assert report.renewed_same_key == (DEVICE.name,)
    assert DEVICE.name in report.renewed and not report.retired
    new = store.record(DEVICE.name)
    assert new is not None and new.serial != old.serial and new.not_after > old.not_after
    return store, old.serial, new.serial, inside


def test_device_renewal_keeps_the_key_and_the_old_certificate_valid(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    reconcile(settings_for(state), FLEET, now=T0)
    key_before = PkiStore(state).private_key_pem(DEVICE.name)
    cert_before = PkiStore(state).certificate_pem(DEVICE.name)
    store, old, _new, _ = _renewed(state)
    assert store.private_key_pem(DEVICE.name) == key_before  # same key, still on the machine
    assert _public(store.certificate_pem(DEVICE.name)) == _public(cert_before)
    retiring = next(r for r in store.records() if r.serial == old)
    assert retiring.status == "retiring"
    assert old not in _crl_serials(store)  # the board in the field still gets in
    # index.txt lists it as valid (people reading it see both).
    assert (state / "index.txt").read_text().count("\tdevice\tCN=gw-0001") == 2


def test_a_broker_renewal_still_revokes_its_old_certificate_at_once(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    old = store.record("broker-1")
    assert old is not None
    report = reconcile(
        settings, FLEET, now=old.not_after - timedelta(days=settings.renew_before_days - 1)
    )
    assert "broker-1" in report.renewed and not report.renewed_same_key
    broker_records = [r for r in store.records() if r.name == "broker-1"]
    assert [r.status for r in broker_records] == ["revoked", "valid"]
    assert old.serial in _crl_serials(store)


def test_old_certificate_is_revoked_only_once_the_device_uses_the_new_one(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state)
    store, old, new, inside = _renewed(state)
    later = inside + timedelta(days=1)
    # Delivered but not yet in use: nothing is revoked, nothing is re-signed for it.
    record_observations(state, delivered={DEVICE.name: new}, now=later)
    report = reconcile(settings, FLEET, now=later)
    assert not report.retired and old not in _crl_serials(store)
    # The gateway reports the old serial still (it was offline): still kept.
    record_observations(state, in_use={DEVICE.name: old}, now=later)
    assert not reconcile(settings, FLEET, now=later).retired
    # Seen using the new one: the next run revokes the old one as superseded.
    record_observations(state, in_use={DEVICE.name: new}, now=later)
    report = reconcile(settings, FLEET, now=later)
    assert report.retired == (DEVICE.name,) and report.crl_changed
    assert old in _crl_serials(store)
    revoked = next(r for r in store.records() if r.serial == old)
    assert (revoked.status, revoked.reason) == ("revoked", "superseded")
    assert store.record(DEVICE.name).serial == new  # type: ignore[union-attr]
    assert not reconcile(settings, FLEET, now=later).changed


def test_a_device_never_seen_keeps_its_old_certificate_until_it_expires(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state)
    store, old, _new, _ = _renewed(state)
    not_after = next(r for r in store.records() if r.serial == old).not_after
    assert not reconcile(settings, FLEET, now=not_after - timedelta(minutes=1)).retired
    report = reconcile(settings, FLEET, now=not_after + timedelta(seconds=1))
    assert report.retired == (DEVICE.name,)
    assert old not in _crl_serials(store)  # expired: it leaves the CRL (RFC 5280)


def test_a_device_removed_while_renewing_loses_both_certificates(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state)
    store, old, new, inside = _renewed(state)
    report = reconcile(settings, [s for s in FLEET if s.name != DEVICE.name], now=inside)
    assert report.retired == (DEVICE.name,) and DEVICE.name in report.revoked
    assert {old, new} <= _crl_serials(store)


def test_renew_same_key_off_issues_a_new_key_and_revokes_at_once(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state, renew_same_key=False)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    old = store.record(DEVICE.name)
    assert old is not None
    key_before = store.private_key_pem(DEVICE.name)
    report = reconcile(
        settings, FLEET, now=old.not_after - timedelta(days=settings.renew_before_days - 1)
    )
    assert DEVICE.name in report.renewed and not report.renewed_same_key
    assert store.private_key_pem(DEVICE.name) != key_before
    assert old.serial in _crl_serials(store)


def test_status_shows_issued_delivered_and_in_use(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state)
    _store, old, new, inside = _renewed(state)

    def device_rows() -> list[tuple[str, str, str, str]]:
        rows = status(settings, now=inside).rows
        return [(r.serial, r.state, r.delivered, r.in_use) for r in rows if r.kind == "device"]

    new_hex, old_hex = f"{new:040x}", f"{old:040x}"
    assert device_rows() == [(old_hex, "retiring", "-", "-"), (new_hex, "ok", "no", "-")]
    record_observations(state, delivered={DEVICE.name: new}, in_use={DEVICE.name: old}, now=inside)
    assert device_rows() == [(old_hex, "retiring", "-", "yes"), (new_hex, "ok", "yes", "no")]
    record_observations(state, in_use={DEVICE.name: new}, now=inside)
    assert device_rows()[1] == (new_hex, "ok", "yes", "yes")
    ledger = read_ledger(state)
    assert ledger[DEVICE.name].in_use == new and ledger[DEVICE.name].delivered == new


def test_revoking_a_renewed_device_revokes_its_retiring_certificate_too(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    store, old, new, inside = _renewed(state)
    revoke(settings_for(state), DEVICE.name, "keyCompromise", now=inside)
    assert {old, new} <= _crl_serials(store)  # both carry the compromised key
    assert not [r for r in store.records() if r.name == DEVICE.name and r.status != "revoked"]
