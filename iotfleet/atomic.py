"""Crash-safe file writes on the control machine: readers see the old file or the new one, never
half of either; a write that fails says so in one line and leaves no temporary file behind.

Temporary files are named ``.<name>.iotfleet-tmp-<pid>-<random>`` beside their target: a run
killed mid-write (SIGKILL, power cut) leaves one, and the next write into that directory removes
those whose process is gone (``remove_dead_temp_files``).

Both helpers honour a planning run's stage (``iotfleet.pki.fsio.staged``): while one is active
they record the write for the commit instead of doing it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iotfleet.pki.fsio import Stage

_TEMP_MARK = ".iotfleet-tmp-"


class WriteError(OSError):
    """A control-machine write failed (disk full, permission denied, read-only file system).

    ``str()`` is one line for people: the path, the system's reason and what was not done.
    It is an ``OSError`` (same errno), so callers that handle those still do.
    """

    def __init__(self, path: Path, cause: OSError, not_done: str) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.not_done = not_done

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}; {self.not_done}"


def write_error(path: Path, cause: OSError, not_done: str) -> WriteError:
    """``cause`` as a ``WriteError`` (kept as it is if it already is one)."""
    return cause if isinstance(cause, WriteError) else WriteError(path, cause, not_done)


def write_file_atomically(
    path: Path, data: bytes, *, mode: int = 0o600, not_done: str | None = None
) -> None:
    """Replace ``path`` with ``data`` (temp file in the same directory, fsync, rename).

    Raises:
        WriteError: naming ``path``; ``path`` is left as it was, no temp file remains.
    """
    stage = _active_stage()
    if stage is not None:
        stage.record(
            lambda: write_file_atomically(path, data, mode=mode, not_done=not_done),
            path=path,
            data=data,
        )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_dead_temp_files(path.parent)
        temp = _write_temp(path, data, mode)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
    except OSError as exc:
        raise write_error(path, exc, not_done or f"{path.name} was left as it was") from None


def write_new_file(
    path: Path, data: bytes, *, mode: int = 0o600, not_done: str | None = None
) -> bool:
    """Create ``path`` with ``data`` unless it exists; never overwrites. True if created.

    A staged write that finds the file created by someone else at commit time fails the commit
    (what was planned from it would not match).

    Raises:
        WriteError: naming ``path``; nothing was created, no temp file remains.
    """
    stage = _active_stage()
    if stage is not None:
        if stage.exists(path):
            return False

        def create() -> None:
            from iotfleet.pki.errors import StateError

            if not write_new_file(path, data, mode=mode, not_done=not_done):
                raise StateError(
                    f"{path} was created by another run since this one planned: nothing more "
                    "was written; run again"
                )

        stage.record(create, path=path, data=data)
        return True
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_dead_temp_files(path.parent)
        temp = _write_temp(path, data, mode)
        try:
            os.link(temp, path)  # atomic create-if-absent
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise write_error(path, exc, not_done or f"{path.name} was not created") from None
    return True


def _active_stage() -> Stage | None:
    # Imported here: the PKI's errors build on WriteError (a cycle at import time otherwise).
    from iotfleet.pki import fsio

    return fsio.active_stage()


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """A complete, durable copy of ``data`` under a temp name beside ``path`` (removed again if
    anything fails)."""
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def remove_dead_temp_files(directory: Path) -> list[Path]:
    """Remove temp files of our writers in ``directory`` whose process is gone (a crash);
    those of a live process (a concurrent run writing) are left alone. Returns what went."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        pid = _writer_pid(entry.name)
        if pid is None or _alive(pid) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _writer_pid(name: str) -> int | None:
    head, mark, tail = name.rpartition(_TEMP_MARK)
    if not mark or not head.startswith("."):
        return None
    pid, _, _ = tail.partition("-")
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
