"""Re-key over the air (issue 13), the CA's side: the CSR rules, and the reconcile plan signing a
gateway's CSR as a renewal whose old certificate stays valid until the new one is in use."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.rekey_delivery import due_rekeys
from iotfleet.fleet.secrets import SecretStore
from iotfleet.gateway.rekey import csr_pem, new_key_pem
from iotfleet.model import InventoryError, RawHost, build_fleet
from iotfleet.pki import PkiStore, reconcile, status
from iotfleet.pki.csr import CsrRejectedError, checked_csr_key
from iotfleet.pki.delivery import record_observations
from iotfleet.pki.index import load_index
from iotfleet.pki.rekey import key_since, read_rekeys, record_csr, request_rekey
from iotfleet.pki.state import locked_layout
from iotfleet.pki.store import KeyOnBoardError
from iotfleet.pki.testing import csr_signed_by_another_key
from tests.unit.pki_helpers import DEVICE, ENV, FLEET, PASSPHRASE, settings_for

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
GW = DEVICE.name


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _csr(subject: x509.Name, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


# -- the CSR rules -------------------------------------------------------------------------------


def test_a_good_csr_gives_its_public_key() -> None:
    key_pem = new_key_pem("ec-p256")  # what the simulator makes on the board
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert checked_csr_key(csr_pem(GW, key_pem), GW, "ec-p256") == _spki(key.public_key())


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        (_cn("gw-0002"), "not 'CN=gw-0001'"),  # another device's name
        (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GW),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]), "not 'CN=gw-0001'"),
        (x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, GW)]), "not 'CN=gw-0001'"),
        (x509.Name([]), "not 'CN=gw-0001'"),
    ],
)  # fmt: skip
def test_a_csr_for_another_subject_is_refused(subject: x509.Name, why: str) -> None:
    pem = _csr(subject, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CsrRejectedError, match=why):
        checked_csr_key(pem, GW, "ec-p256")


def test_a_csr_not_signed_by_its_own_key_is_refused() -> None:
    carried, signer = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    forged = csr_signed_by_another_key(GW, carried, signer)
    assert x509.load_pem_x509_csr(forged).public_key() == carried.public_key()
    with pytest.raises(CsrRejectedError, match="not signed by the key it carries"):
        checked_csr_key(forged, GW, "ec-p256")
    # The same construction, honestly signed, passes: the rule is the signature, not the builder.
    assert checked_csr_key(csr_signed_by_another_key(GW, carried, carried), GW, "ec-p256")


def test_a_csr_with_another_key_type_or_not_a_csr_is_refused() -> None:
    with pytest.raises(
        CsrRejectedError, match="carries a rsa-2048 key, the inventory says ec-p256"
    ):
        checked_csr_key(_csr(_cn(GW), rsa.generate_private_key(65537, 2048)), GW, "ec-p256")
    with pytest.raises(CsrRejectedError, match="not a PEM PKCS#10"):
        checked_csr_key(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", GW, "ec-p256")


# -- the plan signs it ---------------------------------------------------------------------------


def _rekeyed(state: Path, csr: bytes, at: datetime) -> tuple[PkiStore, int]:
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    old = store.record(GW)
    assert old is not None
    entry = request_rekey(state, GW, "operator", at)
    assert record_csr(state, GW, entry.request, csr, at)
    assert not record_csr(state, GW, "0" * 32, csr, at)  # an answer to no pending request
    return store, old.serial


def test_reconcile_signs_the_csr_key_and_keeps_the_old_certificate_valid(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    key_pem = new_key_pem("ec-p256")
    board_key = serialization.load_pem_private_key(key_pem, password=None)
    at = T0 + timedelta(days=100)
    store, old = _rekeyed(state, csr_pem(GW, key_pem), at)
    report = reconcile(settings_for(state), FLEET, now=at)
    assert report.renewed_same_key == (GW,) and GW in report.renewed and not report.warnings
    new = store.record(GW)
    assert new is not None and new.serial != old and new.status == "valid"
    leaf = x509.load_pem_x509_certificate(store.certificate_pem(GW))
    assert _spki(leaf.public_key()) == _spki(board_key.public_key())
    assert leaf.subject == _cn(GW)
    # The key was made on the board: the PKI has none to hand out (or to flash).
    with pytest.raises(KeyOnBoardError, match="re-keyed over the air"):
        store.private_key_pem(GW)
    assert not list(state.glob("packs/*.keys.pem.new"))
    # The old certificate is still valid (retiring) and not in the CRL.
    crl = x509.load_pem_x509_crl(store.crl_pem())
    assert old not in {e.serial_number for e in crl}
    assert [r.status for r in store.records() if r.serial == old] == ["retiring"]
    # Signed once: the next run has nothing to sign (the current certificate carries the key).
    again = reconcile(settings_for(state), FLEET, now=at + timedelta(hours=1))
    assert not again.renewed and store.record(GW).serial == new.serial  # type: ignore[union-attr]
    # Seen using the new one: the old one is revoked.
    record_observations(state, in_use={GW: new.serial}, now=at + timedelta(hours=2))
    done = reconcile(settings_for(state), FLEET, now=at + timedelta(hours=2))
    assert done.retired == (GW,)
    crl = x509.load_pem_x509_crl(store.crl_pem())
    assert old in {e.serial_number for e in crl}
    # Later renewals keep the board's key (the PKI renews on the public key alone).
    due = new.not_after - timedelta(days=10)
    renewed = reconcile(settings_for(state), FLEET, now=due)
    assert renewed.renewed_same_key == (GW,)
    leaf = x509.load_pem_x509_certificate(store.certificate_pem(GW))
    assert _spki(leaf.public_key()) == _spki(board_key.public_key())
    with locked_layout(state, shared=True) as layout:
        assert key_since(layout, load_index(layout), GW) == new.not_before


def test_a_forged_csr_in_the_state_is_not_signed(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    carried, signer = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    at = T0 + timedelta(days=1)
    store, old = _rekeyed(state, csr_signed_by_another_key(GW, carried, signer), at)
    report = reconcile(settings_for(state), FLEET, now=at)
    assert not report.renewed
    assert any("re-key refused, nothing signed" in w and "not signed by the key" in w
               for w in report.warnings), report.warnings  # fmt: skip
    assert store.record(GW).serial == old  # type: ignore[union-attr]
    assert GW in read_rekeys(state)


def test_key_age_counts_from_the_first_certificate_of_the_key(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    settings = settings_for(state)
    reconcile(settings, FLEET, now=T0)
    first = PkiStore(state).record(GW)
    assert first is not None
    reconcile(settings, FLEET, now=first.not_after - timedelta(days=10))  # same key
    with locked_layout(state, shared=True) as layout:
        assert key_since(layout, load_index(layout), GW) == first.not_before


def test_a_key_older_than_the_inventory_limit_is_due_for_a_rekey(tmp_path: Path) -> None:
    fleet = build_fleet([RawHost("mqtt1.example.net", ("brokers",), {
        "fleet_name": "demo", "fleet_devices": [{"id": GW}], "pki_device_key_max_age_days": 365,
    })])  # fmt: skip
    settings = settings_for(tmp_path / "pki")
    ctx = FleetContext(fleet, tmp_path, SecretStore(tmp_path / "secrets"), settings, {})
    reconcile(settings, FLEET, now=T0)
    first = PkiStore(settings.state_dir).record(GW)
    assert first is not None
    # A same-key renewal does not make the key younger.
    reconcile(settings, FLEET, now=first.not_after - timedelta(days=10))
    born = first.not_before
    assert due_rekeys(ctx, now=born + timedelta(days=364)) == {}
    assert due_rekeys(ctx, now=born + timedelta(days=365)) == {GW: "key age"}
    # Without a limit, only the operator's request makes it due.
    unlimited = dataclasses.replace(
        ctx, fleet=fleet.model_copy(update={"pki": fleet.pki.model_copy(
            update={"device_key_max_age_days": None})}),
    )  # fmt: skip
    assert due_rekeys(unlimited, now=born + timedelta(days=3000)) == {}
    request_rekey(settings.state_dir, GW, "operator", T0)
    assert due_rekeys(unlimited, now=T0) == {GW: "operator"}


def test_a_bad_key_age_limit_is_refused_naming_the_key() -> None:
    with pytest.raises(InventoryError, match="pki_device_key_max_age_days"):
        build_fleet([RawHost("mqtt1.example.net", ("brokers",), {
            "fleet_name": "demo", "pki_device_key_max_age_days": 0,
        })])  # fmt: skip


def test_pki_status_shows_a_rekey_in_progress(tmp_path: Path) -> None:
    state = tmp_path / "pki"
    reconcile(settings_for(state), FLEET, now=T0)
    request_rekey(state, GW, "operator", T0)
    row = next(r for r in status(settings_for(state), now=T0).rows if r.name == GW)
    assert row.note == "re-key (operator): asked"
