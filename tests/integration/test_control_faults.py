"""Control-machine writes on a real full file system and a real read-only one (issue 12): one
clear line naming the file and what was not done, no traceback, no temporary or orphan file,
a registry that stays readable, and a next run (with space again) that converges."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotfleet.flash import FlashRecord, FlashRegistry
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.fs.errors import WriteError
from iotfleet.pki import IdentitySpec, StateWriteError, reconcile
from iotfleet.report import history
from iotfleet.report.history import append
from tests.integration.conftest import REPO, require_root
from tests.support.small_fs import fill, mounted_tmpfs, read_only
from tests.unit.pki_helpers import ENV, FLEET, PASSPHRASE, settings_for, snapshot

NEWCOMER = IdentitySpec("gw-0042", "device")


@pytest.fixture
def small_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (unmounted afterwards)."""
    require_root()
    monkeypatch.setenv(ENV, PASSPHRASE)
    with mounted_tmpfs(tmp_path / "fs", "2m") as mount:
        yield mount


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or "iotfleet-tmp" in p.name]


def iotfleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iotfleet", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_pki_on_a_full_disk_fails_in_one_line_and_the_next_run_converges(small_fs: Path) -> None:
    state = small_fs / "pki"
    reconcile(settings_for(state), FLEET, now=datetime.now(UTC))
    before = snapshot(state)
    filler = fill(small_fs)

    with pytest.raises(StateWriteError) as full:
        reconcile(settings_for(state), (*FLEET, NEWCOMER))
    message = str(full.value)
    assert "\n" not in message and message.startswith(f"cannot write {state}/packs/")
    assert "No space left on device" in message and "nothing of it is issued" in message
    assert snapshot(state) == before and temp_files(state) == []

    # The real CLI: one line, exit 2, nothing left behind.
    revoke = iotfleet("pki", "revoke", "gw-0001", "--reason", "keyCompromise",
                      "--state-dir", str(state))  # fmt: skip
    assert revoke.returncode == 2, revoke.stderr
    line = one_line(revoke.stderr)
    assert f"cannot write {state}/" in line and "No space left on device" in line, line
    assert snapshot(state) == before and temp_files(state) == []

    filler.unlink()
    report = reconcile(settings_for(state), (*FLEET, NEWCOMER))
    assert report.issued == ("gw-0042",)
    assert not reconcile(settings_for(state), (*FLEET, NEWCOMER)).changed


def test_pki_in_a_read_only_dir_names_the_file(small_fs: Path) -> None:
    state = small_fs / "pki"
    reconcile(settings_for(state), FLEET, now=datetime.now(UTC))
    before = snapshot(state)
    with read_only(small_fs):
        with pytest.raises(StateWriteError, match=r"cannot write .*: Read-only file system; "):
            reconcile(settings_for(state), (*FLEET, NEWCOMER))
        fresh = small_fs / "new-pki"
        with pytest.raises(StateWriteError, match=rf"cannot write {fresh}: Read-only file system"):
            reconcile(settings_for(fresh), FLEET)
    assert snapshot(state) == before


def test_the_flash_registry_stays_readable_on_a_full_disk(small_fs: Path) -> None:
    path = small_fs / "fleet" / "flash-registry.sqlite"
    registry = FlashRegistry(path)
    record = FlashRecord(station="@local", port="socket://b:1", device_id="gw-1",
                         result="flashed", provisioned=True, mac="18:fe:34:00:00:01")  # fmt: skip
    registry.record(record)
    registry.close()
    filler = fill(small_fs)

    registry = FlashRegistry(path)
    assert registry.is_provisioned("gw-1")  # a reader needs no space
    with pytest.raises(WriteError) as full:
        registry.record(FlashRecord(station="@local", port="socket://b:1", device_id="gw-1",
                                    result="failed", provisioned=False))  # fmt: skip
    assert str(full.value).startswith(f"cannot write {path}: database or disk is full")
    assert "the outcome for gw-1 on socket://b:1 (failed) is not recorded" in str(full.value)
    assert [r.result for r in registry.history()] == ["flashed"]
    registry.close()
    reopened = FlashRegistry(path)
    assert reopened.is_provisioned("gw-1")
    reopened.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["flash-registry.sqlite"]

    # A registry first created on a full disk leaves no empty file behind.
    fresh = small_fs / "other" / "flash-registry.sqlite"
    fresh.parent.mkdir()
    with pytest.raises(WriteError, match="the flash registry was not"):
        FlashRegistry(fresh).history()
    assert not fresh.exists()

    filler.unlink()
    registry = FlashRegistry(path)
    registry.record(record)
    assert [r.result for r in registry.history()] == ["flashed", "flashed"]
    registry.close()


def test_reports_on_a_full_disk_leave_no_temp_file_and_crash_leftovers_go(
    small_fs: Path,
) -> None:
    from iotfleet.check.results import RunResults

    reports = small_fs / "reports"
    reports.mkdir()
    run = RunResults(fleet="f", inventory="i", started=datetime.now(UTC))
    filler = fill(small_fs)
    with pytest.raises(WriteError, match=r"cannot write .*/history/f/.*No space left on device"):
        append(reports / history.HISTORY, run)
    with pytest.raises(WriteError, match=r"report.html: No space left on device; report.html"):
        write_file_atomically(reports / "report.html", b"x" * 100_000)
    assert temp_files(small_fs) == []
    filler.unlink()

    # A writer killed mid-write leaves its temp file; the next write there removes it.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    leftover = reports / f".report.html.iotfleet-tmp-{pid}-0badc0de"
    leftover.write_bytes(b"half")
    live = reports / f".report.html.iotfleet-tmp-{os.getppid()}-0badc0de"  # a live writer's
    live.write_bytes(b"being written")
    write_file_atomically(reports / "report.html", b"<html>")
    assert not leftover.exists() and live.exists()
    assert append(reports / history.HISTORY, run).is_file()


def test_a_flash_with_a_full_state_disk_still_flashes_and_says_what_was_not_recorded(
    small_fs: Path, tmp_path: Path
) -> None:
    from iotfleet.flash import flash_boards, station_jobs
    from tests.unit.gateway_helpers import (
        GatewayFleet,
        board,
        emulated,
        gateway_environment,
        options,
    )

    home = tmp_path / "home"
    home.mkdir()
    with gateway_environment(home):
        gateways = GatewayFleet(home, [{"id": "gw-1"}])
        with emulated(tmp_path / "a.flash", "18:fe:34:00:00:51") as gw:
            jobs, _ = station_jobs(gateways.context([board(gw, "gw-1")]), "@local")
            registry = FlashRegistry(small_fs / "flash-registry.sqlite")
            registry.history()  # created while there is space
            fill(small_fs)
            opts = options(tmp_path, log_dir=small_fs / "logs")
            [result] = flash_boards(jobs, registry, progress=False, options=opts)
            registry.close()
    assert result.status == "flashed" and gw.counters.bytes_programmed > 0, result
    assert "registry not updated: cannot write " in result.message, result.message
    assert "database or disk is full" in result.message
    assert f"cannot write {small_fs}/logs" in result.message, result.message
    assert "this board's log is incomplete" in result.message
    assert temp_files(small_fs) == []
