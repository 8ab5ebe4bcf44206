"""File-system primitives: the state lock, atomic and no-clobber writes, durability.

Why each piece:
- one fcntl lock per state dir so concurrent runs (two deploys, a deploy and a manual revoke)
  serialize instead of both issuing;
- atomic replace (temp in the same dir + fsync + rename + fsync dir) for files that change (index,
  CRL, chain), so a reader or a crash sees the old or the new file, never half of one;
- exclusive create (link(), which fails on an existing name) for keys, so an existing key is
  never overwritten, whatever the bug or race.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from iotfleet.pki.errors import StateError, StateWriteError

DIR_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
_TMP_PREFIX = ".tmp-"
# What a failed write leaves undone, unless the caller knows better (see save_index).
NOT_COMMITTED = (
    "this run stopped before its commit (index.json): nothing of it is issued, "
    "revoked or re-signed; free space or fix permissions and run again"
)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 when missing.

    Raises:
        StateWriteError: it could not be created (naming it).
    """
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateWriteError(path, exc, NOT_COMMITTED) from None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created/renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, data: bytes, mode: int = PUBLIC_MODE, *, not_done: str = NOT_COMMITTED
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises:
        StateWriteError: naming ``path`` and ``not_done``; ``path`` is as it was, no temp file.
    """
    try:
        tmp = _durable_temp(path, data, mode)
        try:
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except OSError as exc:
        raise StateWriteError(path, exc, not_done) from None


def create_exclusive_durable(
    path: Path, data: bytes, mode: int, *, not_done: str = NOT_COMMITTED
) -> None:
    """Create ``path`` complete or not at all, never replacing an existing file (CA keys).

    Raises:
        StateError: ``path`` exists. StateWriteError: the write failed (nothing was created).
    """
    try:
        tmp = _durable_temp(path, data, mode)
        try:
            os.link(tmp, path)  # link() fails with EEXIST instead of replacing, unlike rename()
        except FileExistsError:
            raise StateError(f"{path} already exists: refusing to overwrite it") from None
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:
        raise StateWriteError(path, exc, not_done) from None


def _durable_temp(path: Path, data: bytes, mode: int) -> Path:
    """``data`` under a temp name beside ``path``, synced; removed again if anything fails."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_temp_files(directory: Path) -> None:
    """Remove temp files an interrupted run left behind (only ours, by prefix)."""
    if not directory.is_dir():
        return
    for entry in os.scandir(directory):
        if entry.name.startswith(_TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink()


def is_temp_name(name: str) -> bool:
    """True for names of our temp files."""
    return name.startswith(_TMP_PREFIX)


@contextlib.contextmanager
def state_lock(lock_path: Path, *, shared: bool = False, timeout: float = 600.0) -> Iterator[None]:
    """Hold an fcntl lock on ``lock_path``: exclusive for writers (file created empty if missing),
    shared for readers (who need no write access: without a lock file there is nothing to wait for).

    The file is never written, so holding the lock changes no bytes in the state dir.
    """
    if shared:
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            yield
            return
    else:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, KEY_MODE)
        except OSError as exc:
            raise StateWriteError(
                lock_path,
                exc,
                "the PKI was not locked, so nothing of it was "
                "changed; fix permissions (or free space) and run again",
            ) from None
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateError(
                        f"another iotfleet PKI run has held {lock_path} for more than "
                        f"{timeout:.0f}s; is a deploy still running?"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            # Explicit unlock: forked workers may still share the open file description.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
