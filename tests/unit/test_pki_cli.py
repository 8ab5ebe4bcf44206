"""`iotfleet pki status|revoke|renew-intermediate` as a person uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.pki import reconcile
from tests.unit.pki_helpers import ENV, FLEET, PASSPHRASE, settings_for, snapshot


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV, PASSPHRASE)
    path = tmp_path / "pki"
    reconcile(settings_for(path), FLEET)
    return path


def test_status_lists_days_left_and_exits_0_when_fine(state: Path) -> None:
    result = CliRunner().invoke(cli, ["pki", "status", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "gw-0001" in result.output and "days left" in result.output
    assert PASSPHRASE not in result.output


def test_status_exits_1_when_the_crl_is_stale(state: Path) -> None:
    (state / "crl.pem").write_bytes(b"not the crl the index recorded")
    result = CliRunner().invoke(cli, ["pki", "status", "--state-dir", str(state)])
    assert result.exit_code == 1, result.output
    assert "stale" in result.output and "need attention" in result.output


def test_revoke_and_unknown_reason(state: Path) -> None:
    runner = CliRunner()
    before = snapshot(state)
    bad = runner.invoke(
        cli, ["pki", "revoke", "gw-0001", "--reason", "stolen", "--state-dir", str(state)]
    )
    assert bad.exit_code == 2 and "'stolen' is not one of" in bad.output
    assert "keyCompromise" in bad.output
    assert snapshot(state) == before
    good = runner.invoke(
        cli, ["pki", "revoke", "gw-0001", "--reason", "keyCompromise", "--state-dir", str(state)]
    )
    assert good.exit_code == 0, good.output
    assert "revoked gw-0001" in good.output


def test_errors_are_clear_and_never_show_the_passphrase(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "a-wrong-passphrase-value")
    result = CliRunner().invoke(
        cli, ["pki", "revoke", "gw-0001", "--reason", "keyCompromise", "--state-dir", str(state)]
    )
    assert result.exit_code == 2
    assert "IOTFLEET_PKI_PASSPHRASE" in result.output
    assert "a-wrong-passphrase-value" not in result.output and PASSPHRASE not in result.output
    result = CliRunner().invoke(cli, ["pki", "renew-intermediate", "--state-dir", str(state)])
    assert result.exit_code == 2 and "a-wrong-passphrase-value" not in result.output


def test_missing_state_dir_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["pki", "status"], env={"IOTFLEET_PKI_STATE_DIR": ""})
    assert result.exit_code == 2 and "--state-dir" in result.output
    result = CliRunner().invoke(cli, ["pki", "status", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no PKI state directory" in result.output


def test_export_writes_chain_certificate_and_a_private_key(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "creds"
    result = CliRunner().invoke(
        cli, ["pki", "export", "gw-0001", "--out", str(out), "--state-dir", str(state)]
    )
    assert result.exit_code == 0, result.output
    assert "PRIVATE KEY" not in result.output
    assert (out / "gw-0001.key").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN CERTIFICATE" in (out / "gw-0001.crt").read_bytes()
    assert (out / "ca.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 2
    missing = CliRunner().invoke(
        cli, ["pki", "export", "nobody", "--out", str(out), "--state-dir", str(state)]
    )
    assert missing.exit_code == 2 and "nobody has no valid certificate" in missing.output
