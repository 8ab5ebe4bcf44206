"""Secret references: read from env or file, or generated once and kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotfleet.fleet.secrets import SecretError, SecretStore
from iotfleet.model import SecretRef


def test_generated_secret_is_created_once_and_kept_private(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    first = store.resolve(SecretRef.parse("generated"), "mqtt-password/dash", where="w", key="k")
    again = SecretStore(tmp_path / "secrets").generated("mqtt-password/dash")
    assert first.get_secret_value() == again and len(again) >= 32
    assert (tmp_path / "secrets/mqtt-password/dash").stat().st_mode & 0o777 == 0o600
    assert "**" in repr(first) and again not in repr(first)


def test_env_secret_missing_names_owner_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IOTFLEET_TEST_PW", raising=False)
    store = SecretStore(tmp_path)
    with pytest.raises(SecretError, match="client dash: password: environment variable "):
        store.resolve(
            SecretRef.parse("env:IOTFLEET_TEST_PW"), "s", where="client dash", key="password"
        )
    monkeypatch.setenv("IOTFLEET_TEST_PW", "value-from-env")
    secret = store.resolve(SecretRef.parse("env:IOTFLEET_TEST_PW"), "s", where="w", key="k")
    assert secret.get_secret_value() == "value-from-env"


def test_secret_file_must_not_be_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("file-secret-value\n")
    path.chmod(0o644)
    ref = SecretRef.parse(f"file:{path}")
    with pytest.raises(SecretError, match=r"readable by others \(mode 0644\)") as caught:
        SecretStore(tmp_path).resolve(ref, "s", where="w", key="k")
    assert "file-secret-value" not in str(caught.value)
    path.chmod(0o600)
    assert SecretStore(tmp_path).resolve(ref, "s", where="w", key="k").get_secret_value() == (
        "file-secret-value"
    )


@pytest.mark.parametrize("value", ["hunter2", "env:", "env:1BAD", 42])
def test_invalid_references_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        SecretRef.parse(value)
