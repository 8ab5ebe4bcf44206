"""The PKI state heals from a crash between index.json and index.txt, and material dated after
the clock (a CRL or certificate signed while the clock ran ahead) is refused and flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotfleet.check.pki_checks import crl_problems, crl_update_problems
from iotfleet.pki import ClockBehindError, IndexCorruptError, PkiStore, reconcile, status
from iotfleet.pki.health import FUTURE
from tests.unit.pki_helpers import ENV, FLEET, PASSPHRASE, settings_for, snapshot

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    reconcile(settings_for(tmp_path / "pki"), FLEET, now=T0)
    return tmp_path / "pki"


class Killed(BaseException):
    """The process dies here (SIGKILL): no handler runs."""


def test_a_crash_between_index_json_and_index_txt_needs_no_person(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iotfleet.pki import fsio

    real = fsio.atomic_write

    def dies_before_index_txt(path: Path, *args: object, **kwargs: object) -> None:
        if path.name == "index.txt":
            raise Killed
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fsio, "atomic_write", dies_before_index_txt)
    with pytest.raises(Killed):
        reconcile(settings_for(state), FLEET[:2], now=T0)  # revokes ops.alice
    monkeypatch.undo()
    monkeypatch.setenv(ENV, PASSPHRASE)
    stale = (state / "index.txt").read_text()
    assert "CN=ops.alice" in stale and stale.count("\nR\t") == 0  # the earlier rendering

    # Readers are not refused, and the next run regenerates index.txt and nothing else.
    assert status(settings_for(state), now=T0).rows
    report = reconcile(settings_for(state), FLEET[:2], now=T0)
    assert report.files_repaired == 1 and not report.revoked
    assert (state / "index.txt").read_text().count("\nR\t") == 1
    before = snapshot(state)
    assert not reconcile(settings_for(state), FLEET[:2], now=T0).changed
    assert snapshot(state) == before


def test_an_edited_index_txt_is_still_refused(state: Path) -> None:
    path = state / "index.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[-1] = "R" + lines[-1][1:]
    path.write_text("".join(lines))
    with pytest.raises(IndexCorruptError, match=r"index\.txt line \d+ .*edited by hand"):
        reconcile(settings_for(state), FLEET, now=T0)


@pytest.mark.parametrize(
    ("index_temp", "chain_temp"),
    [
        (".index.json.iotfleet-tmp-1-0badc0de", ".chain.pem.iotfleet-tmp-1-0badc0de"),
        (".tmp-index.json.0badc0de", ".tmp-chain.pem.0badc0de"),  # as older versions named them
    ],
)
def test_temp_files_a_crash_left_are_removed_by_the_next_run(
    state: Path, index_temp: str, chain_temp: str
) -> None:
    # Under the state lock no other run writes: even a live PID's temp file is a leftover.
    left = [state / index_temp, state / "ca" / chain_temp]
    for path in left:
        path.write_bytes(b"half")
    report = reconcile(settings_for(state), FLEET, now=T0)
    assert report.files_repaired == 2 and not any(p.exists() for p in left)


def test_a_clock_behind_the_newest_crl_refuses_to_sign_and_status_flags_it(state: Path) -> None:
    ahead = T0 + timedelta(days=5)
    assert reconcile(settings_for(state), FLEET, now=ahead).crl_changed  # the clock ran ahead
    before = snapshot(state)

    later = T0 + timedelta(hours=1)  # the clock is right again
    with pytest.raises(ClockBehindError) as refused:
        reconcile(settings_for(state), FLEET, now=later)
    message = str(refused.value)
    assert "crl.pem (thisUpdate) is dated 2030-01-20 11:55:00 UTC" in message
    assert "Nothing was signed" in message and "refresh-crl --force" in message
    assert snapshot(state) == before

    rows = {row.kind: row for row in status(settings_for(state), now=later).rows}
    assert rows["crl"].state == FUTURE and "dated later than this clock" in rows["crl"].note
    assert rows["crl"].needs_attention
    assert status(settings_for(state), now=ahead).rows[2].state != FUTURE

    # The compliance checks flag it, on a broker and on the control machine.
    pem = PkiStore(state).crl_pem()
    [on_broker] = crl_update_problems("mqtt1", pem, 72, now=later)
    assert on_broker.startswith("the CRL on mqtt1 is dated in the future (thisUpdate 2030-01-20")
    assert "refuses every client certificate" in on_broker
    assert crl_update_problems("mqtt1", pem, 72, now=ahead) == []
    [fleet] = crl_problems("mqtt1", pem, pem, now=later)
    assert "the fleet's CRL on the control machine is dated in the future" in fleet
    assert crl_problems("mqtt1", pem, pem, now=ahead) == []


def test_a_certificate_dated_later_than_the_clock_is_flagged(state: Path) -> None:
    from iotfleet.pki import IdentitySpec

    newcomer = IdentitySpec("gw-0099", "device")
    reconcile(settings_for(state), (*FLEET, newcomer), now=T0 + timedelta(days=2))
    later = T0 + timedelta(hours=1)
    with pytest.raises(ClockBehindError, match="dated"):
        reconcile(settings_for(state), (*FLEET, newcomer), now=later)
    rows = {row.name: row for row in status(settings_for(state), now=later).rows}
    assert rows["gw-0099"].state == FUTURE and rows["gw-0099"].note.startswith("notBefore 2030")
    assert rows["gw-0001"].state != FUTURE
