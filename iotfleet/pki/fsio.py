"""File-system primitives: the state lock, atomic and no-clobber writes, durability.

Why each piece:
- one fcntl lock per state dir so concurrent runs (two deploys, a deploy and a manual revoke)
  serialize instead of both issuing;
- atomic replace (temp in the same dir + fsync + rename + fsync dir) for files that change (index,
  CRL, chain), so a reader or a crash sees the old or the new file, never half of one;
- exclusive create for keys, so an existing key is never overwritten, whatever the bug or race;
- one sync for a batch instead of one fsync per file: 10,000 fsyncs cost seconds, one syncfs()
  costs tens of milliseconds and gives the same guarantee once it returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from iotfleet.pki.errors import StateError

DIR_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
_TMP_PREFIX = ".tmp-"
# Below this many new files, fsync each one (touches only our files); above, sync the file system.
_FSYNC_EACH_LIMIT = 64


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 when missing."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created/renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data``; fail if it exists. Not synced: call ``sync_batch`` after.

    Used for immutable, uniquely named files (leaf keys and certificates). A crash may leave a
    partial file, but no index record points at it yet, so the next run removes it as an orphan.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def create_exclusive_durable(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` complete or not at all, never replacing an existing file (CA keys)."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # link() fails with EEXIST instead of replacing, unlike rename()
    except FileExistsError:
        raise StateError(f"{path} already exists: refusing to overwrite an existing key") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sync_batch(files: Iterable[Path], dirs: Iterable[Path]) -> None:
    """Make newly created ``files`` and the entries of ``dirs`` durable."""
    file_list = list(files)
    dir_list = list(dirs)
    if len(file_list) > _FSYNC_EACH_LIMIT and dir_list and _syncfs(dir_list[0]):
        return
    for path in file_list:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in dir_list:
        fsync_dir(directory)


def _syncfs(path: Path) -> bool:
    """syncfs(2) on the file system holding ``path``; False when unavailable (non-Linux)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "syncfs"):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs failed for {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)
    return True


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
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, KEY_MODE)
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
