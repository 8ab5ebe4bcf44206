"""The index seal: a no-change run skips re-verifying what iotfleet wrote, yet an edited or
damaged index or pack is still refused; the store's staged index follows the stage."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotfleet.fs.stage import Stage, staged
from iotfleet.pki import PkiStore, reconcile
from iotfleet.pki import index as index_module
from iotfleet.pki.errors import IndexCorruptError
from iotfleet.pki.index import load_index
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.state import save_index
from tests.unit.pki_helpers import DEVICE, ENV, FLEET, PASSPHRASE, settings_for, snapshot

T0 = datetime(2030, 1, 15, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state_dir = tmp_path / "pki"
    reconcile(settings_for(state_dir), FLEET, now=T0)
    index_module._verified = None  # as a new process would start
    return state_dir


def _no_full_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the index was verified in full")

    monkeypatch.setattr(index_module, "_verify_index", refuse)


def test_a_no_change_run_trusts_the_sealed_index(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StateLayout(state)
    assert layout.index_seal.stat().st_mode & 0o777 == 0o600
    assert layout.seal_key.stat().st_mode & 0o777 == 0o600
    _no_full_verification(monkeypatch)
    before = snapshot(state)
    assert not reconcile(settings_for(state), FLEET, now=T0).changed
    assert snapshot(state) == before
    index = load_index(layout)
    assert index.seal is not None and index.current(DEVICE.name) is not None
    assert PkiStore(state).certificate_pem(DEVICE.name).startswith(b"-----BEGIN CERTIFICATE")


def test_an_edited_index_is_refused_even_with_its_seal_rewritten(state: Path) -> None:
    # The editor also puts the new index.json's SHA-256 in the seal: without seal.key its MAC
    # is wrong, so the index is verified in full, and the edited record is named.
    layout = StateLayout(state)
    text = layout.index_json.read_text()
    layout.index_json.write_text(text.replace('"status":"valid"', '"status":"revoked"', 1))
    seal = json.loads(layout.index_seal.read_text())
    seal["index_json"] = hashlib.sha256(layout.index_json.read_bytes()).hexdigest()
    layout.index_seal.write_text(json.dumps(seal))
    before = snapshot(state)
    with pytest.raises(IndexCorruptError, match=r"record #1 .*does not match its digest"):
        reconcile(settings_for(state), FLEET, now=T0)
    assert snapshot(state) == before


@pytest.mark.parametrize("suffix", [".certs.pem", ".keys.pem"])
def test_an_edited_pack_is_refused(state: Path, suffix: str) -> None:
    # Same size, one base64 character of a PEM body changed: the file scan (sizes) cannot
    # see it, the seal can.
    pack = next((state / "packs").glob("*" + suffix))
    data = bytearray(pack.read_bytes())
    at = data.index(b"-----\n", data.index(b"-----BEGIN ")) + 10
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    pack.write_bytes(bytes(data))
    before = snapshot(state)
    with pytest.raises(IndexCorruptError, match=rf"{pack.name} changed since iotfleet wrote it"):
        reconcile(settings_for(state), FLEET, now=T0)
    assert snapshot(state) == before


def test_an_index_without_a_seal_is_verified_and_sealed_once(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StateLayout(state)
    layout.index_seal.unlink()  # an index written by an older iotfleet
    report = reconcile(settings_for(state), FLEET, now=T0)
    assert report.files_repaired == 1 and not report.issued and layout.index_seal.exists()
    index_module._verified = None
    _no_full_verification(monkeypatch)
    assert not reconcile(settings_for(state), FLEET, now=T0).changed


def test_the_store_reads_the_latest_staged_index(state: Path) -> None:
    # One store per FleetContext lives through a whole plan: a second staged write of the
    # index (another writer in the same plan) must be what it reads next, not the first.
    layout = StateLayout(state)
    stage = Stage()
    with staged(stage):
        index = load_index(layout)
        index.revoke("ops.alice", "superseded", T0)
        save_index(layout, index)
    store = PkiStore(state, stage)
    assert store.record("ops.alice").status == "revoked"  # type: ignore[union-attr]
    assert store.record(DEVICE.name).status == "valid"  # type: ignore[union-attr]
    with staged(stage):
        index = load_index(layout, stage.read_bytes)
        index.revoke(DEVICE.name, "keyCompromise", T0)
        save_index(layout, index)
    assert store.record(DEVICE.name).status == "revoked"  # type: ignore[union-attr]
    assert load_index(layout).current(DEVICE.name) is not None  # nothing committed yet
    stage.commit()
    assert store.record(DEVICE.name).status == "revoked"  # type: ignore[union-attr]
    assert load_index(layout).current(DEVICE.name) is None


def test_a_damaged_seal_means_a_full_verification_not_a_crash(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StateLayout(state)
    doc = json.loads(layout.index_seal.read_text())
    doc["mac"] = "\u00e9" * 64  # not even hex
    layout.index_seal.write_text(json.dumps(doc))
    verified: list[bool] = []
    real = index_module._verify_index

    def counted(*args: Any) -> Any:
        verified.append(True)
        return real(*args)

    monkeypatch.setattr(index_module, "_verify_index", counted)
    index = load_index(layout)
    assert verified == [True] and index.seal is None
    assert index.current(DEVICE.name) is not None


def test_a_sealed_index_of_another_format_is_verified_in_full(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StateLayout(state)
    monkeypatch.setattr(index_module, "FORMAT", "iotfleet-pki-index/999")  # a later release's
    verified: list[bool] = []

    def counted(*args: Any) -> Any:
        verified.append(True)
        return index_module.Index()

    monkeypatch.setattr(index_module, "_verify_index", counted)
    load_index(layout)
    assert verified == [True]
