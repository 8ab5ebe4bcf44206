"""flock locks on the control machine: concurrent runs take turns instead of colliding.

``acquire`` takes the lock, exclusive (writers) or shared (readers), and either refuses at
once (``timeout=0``: "this port is busy") or waits up to ``timeout`` seconds. Refused, it
raises ``LockBusyError`` naming the lock file and the process holding it (read from
``/proc/locks``, so taking a lock writes nothing into the lock file or beside it). A lock is
released by leaving its ``with`` block, or when its process dies, however it dies.

The caller acquires before its ``with`` block, so a refusal is told apart from errors of the
work done under the lock::

    try:
        held = acquire(path, timeout=60)
    except LockBusyError as busy:
        raise MyError(f"the thing is busy ({busy.held_by})") from None
    with held:
        ...
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from iotfleet.fs.errors import LockBusyError, WriteError

_FIRST_POLL = 0.005  # seconds; doubles up to _LAST_POLL while waiting
_LAST_POLL = 0.1


class HeldLock:
    """A lock ``acquire`` took; ``release`` (or the end of a ``with`` block) lets go of it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd  # None: a shared lock on a file that does not exist (nothing to hold)

    def release(self) -> None:
        """Let go of the lock (once; later calls do nothing)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Explicit unlock: forked workers may still share the open file description.
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def acquire(
    path: Path, *, shared: bool = False, timeout: float = 0.0, mode: int = 0o600
) -> HeldLock:
    """Take an flock on ``path``, exclusive unless ``shared``.

    An exclusive lock creates ``path`` empty (with ``mode``) when missing; its directory must
    exist. A shared lock needs only read access, and a missing file is nothing to wait for (no
    writer has created it yet): the lock is then taken on nothing. The file is never written.

    Args:
        path: the lock file.
        shared: a reader's lock (held by any number at once, never with an exclusive one).
        timeout: seconds to wait for the holder to let go; 0 refuses at once.
        mode: permission bits of a lock file created here.

    Raises:
        LockBusyError: the lock is still held after ``timeout`` seconds (naming the holder).
        WriteError: the exclusive lock's file could not be created or opened.
    """
    fd = _open(path, shared, mode)
    if fd is None:
        return HeldLock(path, None)
    try:
        _lock(fd, path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, timeout)
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(path, fd)


def holders(path: Path) -> list[tuple[int, str]]:
    """Processes holding an flock on ``path`` (pid, command name), as ``/proc/locks`` lists
    them; empty when none is listed (or the kernel does not say)."""
    try:
        info = path.stat()
        with open("/proc/locks") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    found: list[tuple[int, str]] = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146706 0 EOF"; waiters have "->" after "1:".
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or not fields[4].isdigit():
            continue
        pid = int(fields[4])
        major, _, rest = fields[5].partition(":")
        minor, _, inode = rest.partition(":")
        try:
            where = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if where == wanted and pid > 0 and all(pid != p for p, _ in found):
            found.append((pid, _command_name(pid)))
    return found


def _open(path: Path, shared: bool, mode: int) -> int | None:
    if shared:
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise WriteError(path, exc, f"{path.name} was not locked, so nothing was done") from None


def _lock(fd: int, path: Path, operation: int, timeout: float) -> None:
    started = time.monotonic()
    pause = _FIRST_POLL
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - started
            if waited >= timeout:
                raise LockBusyError(path, holders(path), timeout) from None
            time.sleep(min(pause, timeout - waited))
            pause = min(pause * 2, _LAST_POLL)


def _command_name(pid: int) -> str:
    if pid == os.getpid():
        return "this process"
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
