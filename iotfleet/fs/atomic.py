"""Crash-safe file writes on the control machine: readers see the old file or the new one, never
half of either; a write that fails says so in one line and leaves no temporary file behind.

How: the data goes to a temp file in the target's directory (so the rename stays on one file
system), which is fsynced, then renamed over the target (``write_file_atomically``) or linked
to it (``write_new_file``: link() fails on an existing name, so nothing is ever overwritten),
then the directory is fsynced so the new entry survives a power cut.

Temp files are named ``.<name>.iotfleet-tmp-<pid>-<random>`` beside their target: a run killed
mid-write (SIGKILL, power cut) leaves one, and the next write into that directory removes those
whose process is gone (``remove_dead_temp_files``).

Both writers honour a planning run's stage (``iotfleet.fs.stage.staged``): while one is active
they record the write for the commit instead of doing it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from iotfleet.fs.errors import PlanConflictError, WriteError
from iotfleet.fs.stage import active_stage

_TEMP_MARK = ".iotfleet-tmp-"


def write_file_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    not_done: str | None = None,
    dir_mode: int = 0o700,
    error: type[WriteError] = WriteError,
) -> None:
    """Replace ``path`` with ``data`` (temp file in the same directory, fsync, rename, fsync
    the directory).

    Args:
        path: the file to replace; missing parent directories are created with ``dir_mode``.
        mode: the file's permission bits, exactly (whatever the umask).
        not_done: what a failure leaves undone, for the message (default: the file is as it was).
        error: the ``WriteError`` subclass raised on failure (the PKI's ``StateWriteError``).

    Raises:
        WriteError: naming ``path``; ``path`` is left as it was, no temp file remains.
    """
    stage = active_stage()
    if stage is not None:
        stage.record(
            lambda: write_file_atomically(
                path, data, mode=mode, not_done=not_done, dir_mode=dir_mode, error=error
            ),
            path=path,
            data=data,
        )
        return
    try:
        temp = _durable_temp(path, data, mode, dir_mode)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except OSError as exc:
        raise _as_error(error, path, exc, not_done or f"{path.name} was left as it was") from None


def write_new_file(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    not_done: str | None = None,
    dir_mode: int = 0o700,
    error: type[WriteError] = WriteError,
) -> bool:
    """Create ``path`` with ``data`` unless it exists; never overwrites. True if created.

    Arguments as for ``write_file_atomically``. A staged write that finds the file created by
    someone else at commit time fails the commit (what was planned from it would not match).

    Raises:
        WriteError: naming ``path``; nothing was created, no temp file remains.
        PlanConflictError: (committing a stage) ``path`` was created since the plan.
    """
    stage = active_stage()
    if stage is not None:
        if stage.exists(path):
            return False

        def create() -> None:
            if not write_new_file(
                path, data, mode=mode, not_done=not_done, dir_mode=dir_mode, error=error
            ):
                raise PlanConflictError(
                    f"{path} was created by another run since this one planned: nothing more "
                    "was written; run again"
                )

        stage.record(create, path=path, data=data)
        return True
    try:
        temp = _durable_temp(path, data, mode, dir_mode)
        try:
            os.link(temp, path)  # atomic create-if-absent
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:
        raise _as_error(error, path, exc, not_done or f"{path.name} was not created") from None
    return True


def fsync_dir(directory: Path) -> None:
    """Make ``directory``'s entries (files created, renamed, removed) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """True for the name of one of our temp files (of a live writer or of a dead one)."""
    return _writer_pid(name) is not None


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


def _as_error(error: type[WriteError], path: Path, cause: OSError, not_done: str) -> WriteError:
    return cause if isinstance(cause, error) else error(path, cause, not_done)


def _durable_temp(path: Path, data: bytes, mode: int, dir_mode: int) -> Path:
    """A complete, synced copy of ``data`` under a temp name beside ``path`` (removed again if
    anything fails); dead writers' temp files there go first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    remove_dead_temp_files(path.parent)
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``: os.open's is narrowed by the umask
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
