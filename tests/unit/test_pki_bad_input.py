"""Bad input: a clear message naming what and where, and the state dir byte-identical."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotfleet.pki import (
    CaExpiredError,
    IdentitySpec,
    IndexCorruptError,
    PassphraseError,
    PkiError,
    PkiInputError,
    reconcile,
    renew_intermediate,
    revoke,
    status,
)
from iotfleet.pki.testing import make_expired_identity
from tests.unit.pki_helpers import ENV, FLEET, PASSPHRASE, settings_for, snapshot

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "pki"
    reconcile(settings_for(path), FLEET, now=T0)
    return path


def _fails_cleanly(
    state: Path, action: Callable[[], object], error: type[PkiError], pattern: str
) -> str:
    before = snapshot(state)
    with pytest.raises(error) as info:
        action()
    message = str(info.value)
    assert re.search(pattern, message), message
    assert PASSPHRASE not in message
    assert snapshot(state) == before
    return message


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (IdentitySpec("gw+1", "device"), r"identity #4 \('gw\+1'\).*not a valid MQTT identity"),
        (IdentitySpec("gw/1", "device"), r"not a valid MQTT identity"),
        (IdentitySpec("gw#", "device"), r"not a valid MQTT identity"),
        (IdentitySpec("", "device"), r"not a valid MQTT identity"),
        (IdentitySpec("a" * 65, "device"), r"not a valid MQTT identity"),
        (IdentitySpec("has space", "device"), r"not a valid MQTT identity"),
        (IdentitySpec("-opt", "device"), r"not a valid MQTT identity"),
        (IdentitySpec("GW-0001", "device"), r"identity #4 .*duplicate name.*identity #2"),
        (
            IdentitySpec("b2", "broker", dns_names=("bad_name.lan",)),
            r"invalid DNS name 'bad_name\.lan'",
        ),
        (IdentitySpec("b2", "broker", dns_names=("*.lan",)), r"invalid DNS name '\*\.lan'"),
        (IdentitySpec("b2", "broker", dns_names=("a" * 64 + ".lan",)), r"invalid DNS name"),
        (
            IdentitySpec("b2", "broker", ip_addresses=("10.0.0.300",)),
            r"invalid IP address '10\.0\.0\.300'",
        ),
        (IdentitySpec("b2", "broker", dns_names="b2.lan"), r"dns_names must be a tuple"),  # type: ignore[arg-type]
        (IdentitySpec("b2", "broker"), r"'b2'\).*broker needs at least one"),
        (IdentitySpec("d2", "device", dns_names=("d2.lan",)), r"for brokers only"),
        (IdentitySpec("d2", "device", key_type="ed25519"), r"key_type 'ed25519'"),  # type: ignore[arg-type]
        (
            IdentitySpec("d2", "device", revoked_reason="stolen"),
            r"unknown revocation reason 'stolen'",
        ),
        (IdentitySpec("d2", "gateway"), r"kind 'gateway'"),  # type: ignore[arg-type]
    ],
)
def test_invalid_spec_is_rejected_before_anything_is_written(
    state: Path, spec: IdentitySpec, pattern: str
) -> None:
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), (*FLEET, spec), now=T0),
        PkiInputError,
        pattern,
    )


def test_all_problems_are_listed_at_once(state: Path) -> None:
    specs = (*FLEET, IdentitySpec("x/y", "device"), IdentitySpec("b9", "broker"))
    message = _fails_cleanly(
        state, lambda: reconcile(settings_for(state), specs, now=T0), PkiInputError, r"2 problems"
    )
    assert "#4" in message and "#5" in message


def test_bad_input_on_a_new_state_dir_creates_nothing(tmp_path: Path) -> None:
    new = tmp_path / "fresh"
    with pytest.raises(PkiInputError):
        reconcile(settings_for(new), (IdentitySpec("a", "device"), IdentitySpec("a", "device")))
    assert not new.exists()


def test_wrong_passphrase(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "not-the-passphrase-at-all")
    message = _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        PassphraseError,
        r"intermediate\.key.*environment variable "
        r"IOTFLEET_PKI_PASSPHRASE",
    )
    assert "not-the-passphrase-at-all" not in message


def test_missing_passphrase_names_the_variable(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV)
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        PassphraseError,
        r"environment variable IOTFLEET_PKI_PASSPHRASE is not set",
    )


def test_passphrase_file_problems_name_the_file(state: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    missing = settings_for(state, passphrase_file=secret)
    _fails_cleanly(
        state,
        lambda: reconcile(missing, FLEET, now=T0),
        PassphraseError,
        r"passphrase file .*pass does not exist",
    )
    secret.write_text(PASSPHRASE)
    secret.chmod(0o644)
    _fails_cleanly(
        state,
        lambda: reconcile(missing, FLEET, now=T0),
        PassphraseError,
        r"readable by group or others \(mode 0644\).*chmod 600",
    )


def test_short_passphrase_refused_for_a_new_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "short")
    with pytest.raises(PassphraseError, match="shorter than 12"):
        reconcile(settings_for(tmp_path / "new"), FLEET)
    assert not (tmp_path / "new").exists()


def _edit_index_json(state: Path, old: str, new: str, count: int = 1) -> None:
    path = state / "index.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_index_json_field_edited_names_the_record(state: Path) -> None:
    _edit_index_json(state, '"status":"valid"', '"status":"revoked"')
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        IndexCorruptError,
        r"index\.json record #1 \(line 5, name 'broker-1'\).*digest",
    )


def test_index_json_record_removed_is_detected(state: Path) -> None:
    path = state / "index.json"
    lines = path.read_text().splitlines(keepends=True)
    del lines[5]  # the second record
    path.write_text("".join(lines))
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        IndexCorruptError,
        r"added, removed or reordered",
    )


def test_index_json_truncated_names_line(state: Path) -> None:
    path = state / "index.json"
    path.write_bytes(path.read_bytes()[:400])
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        IndexCorruptError,
        r"index\.json line \d+ column \d+.*not valid JSON",
    )


def test_index_json_with_recomputed_digest_but_impossible_content(state: Path) -> None:
    # A careful hand edit that fixes the digests still cannot create two valid certs for a name.
    from iotfleet.pki.index import Index, load_index
    from iotfleet.pki.layout import StateLayout

    layout = StateLayout(state)
    index = load_index(layout)
    duplicate = Index([*index.records, index.records[1]], index.crl, index.root_crl)
    (state / "index.json").write_bytes(duplicate.to_json())
    (state / "index.txt").unlink()
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        IndexCorruptError,
        r"record #4 .*serial .* appears twice",
    )


def test_index_txt_edited_by_hand_names_the_line(state: Path) -> None:
    path = state / "index.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "R" + lines[3][1:]  # easy-rsa habit: "revoke" by editing the index
    path.write_text("".join(lines))
    for action in (
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        lambda: status(settings_for(state), now=T0),
        lambda: revoke(settings_for(state), "gw-0001", "keyCompromise", now=T0),
    ):
        _fails_cleanly(state, action, IndexCorruptError, r"index\.txt line 4 .*edited by hand")


def test_missing_or_truncated_key_pack_is_reported(state: Path) -> None:
    key_pack = next((state / "packs").glob("*.keys.pem"))
    data = key_pack.read_bytes()
    key_pack.write_bytes(data[:100])
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        IndexCorruptError,
        r"keys\.pem is truncated.*revoke",
    )
    key_pack.unlink()
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        IndexCorruptError,
        r"keys\.pem is missing .*valid.*iotfleet pki revoke",
    )


def test_expired_intermediate_is_refused(state: Path) -> None:
    later = T0 + timedelta(days=1826)
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=later),
        CaExpiredError,
        r"intermediate expired on \d{4}-\d\d-\d\d.*renew-intermediate",
    )


def test_expired_root_is_refused(state: Path) -> None:
    later = T0 + timedelta(days=7301)
    _fails_cleanly(
        state,
        lambda: reconcile(settings_for(state), FLEET, now=later),
        CaExpiredError,
        r"root CA expired",
    )
    _fails_cleanly(
        state,
        lambda: renew_intermediate(settings_for(state), now=later),
        CaExpiredError,
        r"root CA expired",
    )


def test_revoke_unknown_name_or_reason(state: Path) -> None:
    settings = settings_for(state)
    _fails_cleanly(
        state,
        lambda: revoke(settings, "nobody", "keyCompromise", now=T0),
        PkiInputError,
        r"'nobody' has no valid certificate",
    )
    _fails_cleanly(
        state,
        lambda: revoke(settings, "gw-0001", "stolen", now=T0),
        PkiInputError,
        r"unknown revocation reason 'stolen'; use one of: .*keyCompromise",
    )


def test_invalid_settings(state: Path) -> None:
    bad = settings_for(state, renew_before_days=400)
    _fails_cleanly(
        state, lambda: reconcile(bad, FLEET, now=T0), PkiInputError, r"renew_before_days \(400\)"
    )


def test_passphrase_never_appears_in_any_error(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts: list[str] = []
    wrong = "W-r-o-n-g-secret-value-123"
    monkeypatch.setenv(ENV, wrong)
    for action in (
        lambda: reconcile(settings_for(state), FLEET, now=T0),
        lambda: revoke(settings_for(state), "gw-0001", "keyCompromise", now=T0),
        lambda: renew_intermediate(settings_for(state), now=T0),
        lambda: make_expired_identity(settings_for(state), "old-1", now=T0),
    ):
        with pytest.raises(PkiError) as info:
            action()
        texts += [
            str(info.value),
            repr(info.value),
            str(info.value.__cause__),
            str(info.value.__context__),
        ]
    monkeypatch.setenv(ENV, PASSPHRASE)
    (state / "index.txt").write_text("edited")
    with pytest.raises(PkiError) as info:
        reconcile(settings_for(state), FLEET, now=T0)
    texts.append(str(info.value))
    blob = "\n".join(texts)
    assert wrong not in blob and PASSPHRASE not in blob
    assert "IOTFLEET_PKI_PASSPHRASE" in blob
    assert json.dumps(PASSPHRASE) not in blob
