"""Crash-safe file writes on the control machine: readers see the old file or the new one, never
half of either; a write that fails says so in one line and leaves no temporary file behind.

How: the data goes to a temp file in the target's directory (so the rename stays on one file
system), which is fsynced, then renamed over the target, or linked to it when it must not be
overwritten (link() fails on an existing name), then the directory is fsynced so the new entry
survives a power cut.

Temp files are named ``.<name>.iotfleet-tmp-<pid>-<random>`` beside their target: a run killed
mid-write (SIGKILL, power cut) leaves one, and the next write into that directory removes those
whose process is gone (``remove_dead_temp_files``).

The writer honours a planning run's stage (``iotfleet.fs.stage.staged``): while one is active
it records the write for the commit instead of doing it.
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
    overwrite: bool = True,
    not_done: str | None = None,
    dir_mode: int = 0o700,
    error: type[WriteError] = WriteError,
) -> bool:
    """Write ``data`` to ``path`` crash-safely: replace it, or (``overwrite=False``) create it
    only if absent, never overwriting it whatever the race (keys, secrets, history entries).

    Args:
        path: the file; missing parent directories are created with ``dir_mode``.
        mode: the file's permission bits, exactly (whatever the umask).
        overwrite: replace an existing ``path`` (else leave it and return False).
        not_done: what a failure leaves undone, for the message (default: the file is as it
            was / was not created).
        error: the ``WriteError`` subclass raised on failure (the PKI's ``StateWriteError``).

    Returns:
        True when written; False when ``overwrite=False`` found ``path`` (left as it is).

    Raises:
        WriteError: naming ``path``; ``path`` is as it was, no temp file remains.
        PlanConflictError: (committing a stage) a file planned as new was created since.
    """
    stage = active_stage()
    if stage is not None:
        if not overwrite and stage.exists(path):
            return False

        def commit() -> None:  # at commit time no stage is active: this writes
            if not write_file_atomically(
                path, data, mode=mode, overwrite=overwrite, not_done=not_done,
                dir_mode=dir_mode, error=error,
            ):  # fmt: skip
                raise PlanConflictError(
                    f"{path} was created by another run since this one planned: nothing more "
                    "was written; run again"
                )

        stage.record(commit, path=path, data=data)
        return True
    try:
        temp = _durable_temp(path, data, mode, dir_mode)
        try:
            if overwrite:
                os.replace(temp, path)
            else:
                try:
                    os.link(temp, path)  # fails on an existing name, unlike rename()
                except FileExistsError:
                    return False
        finally:
            temp.unlink(missing_ok=True)  # gone already once renamed
        fsync_dir(path.parent)
    except OSError as exc:
        kept = "was left as it was" if overwrite else "was not created"
        raise _as_error(error, path, exc, not_done or f"{path.name} {kept}") from None
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
