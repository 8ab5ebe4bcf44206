"""The one lock helper (``iotfleet.fs.locks``) between real processes: refused at once or after
a wait, shared beside shared but never beside exclusive, released when its holder dies, and
every refusal naming the lock file and the process that holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iotfleet.fs.errors import LockBusyError, WriteError
from iotfleet.fs.locks import acquire, holders
from iotfleet.lab.errors import LabError
from iotfleet.lab.state import exclusive_lock
from iotfleet.pki.errors import StateError
from iotfleet.pki.fsio import state_lock
from tests.support.waiting import returns_within, wait_until

# A second process holding a lock with the helper until its stdin closes.
_HOLDER = """
import sys
from pathlib import Path
from iotfleet.fs.locks import acquire
with acquire(Path(sys.argv[1]), shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    sys.stdin.readline()
"""


@contextmanager
def held_by_another_process(path: Path, *, shared: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A child process holding ``path`` (exclusive unless ``shared``) for the block."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), "shared" if shared else "exclusive"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert returns_within(child.stdout.readline, 60) == "held\n"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def test_an_exclusive_lock_is_refused_at_once_naming_the_file_and_its_holder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.lock"
    with held_by_another_process(path) as child:
        with pytest.raises(LockBusyError) as busy:
            acquire(path)
        assert [pid for pid, _ in holders(path)] == [child.pid]
    assert busy.value.path == path and busy.value.waited == 0
    assert busy.value.holders[0][0] == child.pid and busy.value.holders[0][1]  # its command
    assert str(busy.value) == f"{path} is held by pid {child.pid} ({busy.value.holders[0][1]})"
    with acquire(path):  # the holder let go
        assert holders(path) == [(os.getpid(), "this process")]
    assert holders(path) == []


def test_a_wait_gives_up_after_the_timeout_and_says_how_long_it_waited(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with held_by_another_process(path) as child, pytest.raises(LockBusyError) as busy:
        returns_within(lambda: acquire(path, timeout=0.3), 60)
    assert str(busy.value) == (
        f"{path} is held by pid {child.pid} ({busy.value.holders[0][1]}) for more than 0.3s"
    )


def test_a_waiting_lock_is_taken_once_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    got: list[bool] = []

    def wait_for_it() -> None:
        with acquire(path, timeout=60):
            got.append(True)

    with held_by_another_process(path) as child:
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        assert child.stdin is not None
        child.stdin.close()  # the holder releases while the waiter polls
        child.wait(timeout=60)
        returns_within(waiter.join, 60)
    assert got == [True]


def test_shared_locks_hold_together_but_never_beside_an_exclusive_one(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.touch()
    with held_by_another_process(path, shared=True) as reader:
        with acquire(path, shared=True):  # a second reader is let in
            assert {pid for pid, _ in holders(path)} == {reader.pid, os.getpid()}
        with pytest.raises(LockBusyError, match=rf"held by pid {reader.pid} "):
            acquire(path)  # a writer is not
    with (
        held_by_another_process(path) as writer,
        pytest.raises(LockBusyError, match=rf"held by pid {writer.pid} "),
    ):
        acquire(path, shared=True)  # nor a reader beside a writer


def test_a_shared_lock_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    with acquire(tmp_path / "none.lock", shared=True):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_killed_holder_releases_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with held_by_another_process(path) as child:
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: child.poll() is not None)
        with acquire(path):
            pass


def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """Threads flashing ports in parallel: each acquire is its own open file."""
    path = tmp_path / "x.lock"
    with acquire(path), pytest.raises(LockBusyError, match=r"held by pid \d+ \(this process\)"):
        acquire(path)


def test_a_lock_file_that_cannot_be_created_is_a_write_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "x.lock"
    with pytest.raises(WriteError) as failed:
        acquire(path)
    assert str(failed.value) == (
        f"cannot write {path}: No such file or directory; x.lock was not locked, so nothing "
        "was done"
    )


def test_the_lock_file_is_never_written_and_gets_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with acquire(path, mode=0o600):
        pass
    assert path.read_bytes() == b"" and path.stat().st_mode & 0o777 == 0o600


def test_the_pki_and_the_lab_say_what_is_busy_and_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with held_by_another_process(path) as child:
        with pytest.raises(StateError) as pki, state_lock(path, timeout=0.1):
            pass
        with pytest.raises(LabError) as lab, exclusive_lock(path, "lab 'demo'", timeout=0.1):
            pass
    holder = f"held by pid {child.pid} ("
    assert str(pki.value).startswith(f"another iotfleet PKI run has held {path} for more than 0.1s")
    assert holder in str(pki.value) and "is a deploy still running?" in str(pki.value)
    assert str(lab.value).startswith(f"lab 'demo' is busy: {path} is {holder}")
    assert str(lab.value).endswith("for more than 0.1s")
