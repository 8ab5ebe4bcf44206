"""The one atomic-write helper (``iotfleet.fs.atomic``) and the stage it records into: a failed
write leaves the old file as it was and no temp file, says in one line what was not done, and a
planning pass writes nothing until its commit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.fs.atomic import is_temp_name, write_file_atomically
from iotfleet.fs.errors import PlanConflictError, WriteError
from iotfleet.fs.stage import Stage, active_stage, staged
from iotfleet.pki.errors import StateError, StateWriteError
from iotfleet.pki.fsio import atomic_write, create_exclusive_durable
from tests.support.small_fs import fill, mounted_tmpfs, read_only


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if is_temp_name(p.name))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own: real ENOSPC and EROFS."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the rest of this module runs without)")
    with mounted_tmpfs(tmp_path / "fs", "1m") as mount:
        yield mount


def test_a_write_replaces_the_file_with_exactly_its_mode_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "report.html"
    old_umask = os.umask(0o077)
    try:
        write_file_atomically(path, b"one", mode=0o644)
        write_file_atomically(path, b"two", mode=0o644)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o700  # created private
    assert os.listdir(path.parent) == ["report.html"]


def test_a_full_disk_leaves_the_old_file_and_no_temp_file(small_fs: Path) -> None:
    path = small_fs / "report.html"
    write_file_atomically(path, b"old")
    fill(small_fs)
    with pytest.raises(WriteError) as full:
        write_file_atomically(path, b"x" * 100_000, not_done="the report was not updated")
    assert str(full.value) == (
        f"cannot write {path}: No space left on device; the report was not updated"
    )
    assert full.value.errno == 28 and isinstance(full.value, OSError)
    with pytest.raises(WriteError, match=r"new\.key: No space left on device; new\.key was not"):
        write_file_atomically(small_fs / "new.key", b"k" * 100_000, overwrite=False)
    assert path.read_bytes() == b"old" and leftovers(small_fs) == []
    assert not (small_fs / "new.key").exists()


def test_a_read_only_file_system_names_the_file_and_keeps_it(small_fs: Path) -> None:
    path = small_fs / "index.json"
    write_file_atomically(path, b"old")
    with read_only(small_fs), pytest.raises(StateWriteError) as refused:
        atomic_write(path, b"new")  # the PKI's flavour: a StateError too
    assert str(refused.value).startswith(f"cannot write {path}: Read-only file system; this run")
    assert isinstance(refused.value, StateError)
    assert path.read_bytes() == b"old" and leftovers(small_fs) == []


def test_a_rename_that_fails_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()  # rename() onto a directory fails after the temp file was written
    (target / "keep").write_text("x")
    with pytest.raises(WriteError) as failed:
        write_file_atomically(target, b"data")
    assert (
        str(failed.value) == f"cannot write {target}: Is a directory; state.json was left as it was"
    )
    assert leftovers(tmp_path) == [] and os.listdir(target) == ["keep"]


def test_a_new_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    assert write_file_atomically(path, b"first", overwrite=False)
    assert not write_file_atomically(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first" and leftovers(tmp_path) == []
    with pytest.raises(StateError, match=r"secret already exists: refusing to overwrite it"):
        create_exclusive_durable(path, b"third", 0o600)
    assert path.read_bytes() == b"first"


def test_temp_files_of_dead_writers_go_those_of_live_ones_stay(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = tmp_path / f".report.html.iotfleet-tmp-{pid}-0badc0de"
    live = tmp_path / f".report.html.iotfleet-tmp-{os.getppid()}-0badc0de"
    for path in (dead, live):
        path.write_bytes(b"half")
    write_file_atomically(tmp_path / "other.html", b"<html>")
    assert not dead.exists() and live.exists()


def test_a_planning_pass_records_instead_of_writing(tmp_path: Path) -> None:
    stage = Stage()
    report, secret = tmp_path / "out" / "report.html", tmp_path / "out" / "secret"
    with staged(stage):
        assert active_stage() is stage
        write_file_atomically(report, b"planned")
        assert write_file_atomically(secret, b"s3cret", overwrite=False)
        assert not write_file_atomically(
            secret, b"another", overwrite=False
        )  # the plan already has it
    assert active_stage() is None
    assert not (tmp_path / "out").exists(), "planning wrote to disk"
    assert stage.changed_paths() == [report, secret]
    assert stage.read_bytes(report) == b"planned" and stage.exists(secret)

    stage.commit()
    assert report.read_bytes() == b"planned" and secret.read_bytes() == b"s3cret"
    assert stage.committed
    with pytest.raises(RuntimeError, match="a write after the run's state was committed"):
        stage.record(lambda: None)


def test_a_commit_refuses_what_changed_since_the_plan(tmp_path: Path) -> None:
    guarded, secret = tmp_path / "index.json", tmp_path / "secret"
    guarded.write_bytes(b"read by the plan")
    stage = Stage()
    stage.guard(guarded)
    with staged(stage):
        write_file_atomically(tmp_path / "crl.pem", b"planned")
    guarded.write_bytes(b"another run committed")
    with pytest.raises(PlanConflictError, match=r"index\.json changed since this run planned"):
        stage.commit()
    assert not (tmp_path / "crl.pem").exists(), "a refused commit wrote something"
    with pytest.raises(PlanConflictError):
        stage.commit()  # one attempt only

    planned = Stage()
    with staged(planned):
        write_file_atomically(secret, b"planned", overwrite=False)
    secret.write_bytes(b"created meanwhile")
    with pytest.raises(PlanConflictError, match=r"secret was created by another run since"):
        planned.commit()
    assert secret.read_bytes() == b"created meanwhile"
