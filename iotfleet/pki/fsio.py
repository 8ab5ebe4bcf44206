"""File-system primitives: the state lock, atomic and no-clobber writes, durability.

Why each piece:
- one fcntl lock per state dir so concurrent runs (two deploys, a deploy and a manual revoke)
  serialize instead of both issuing;
- atomic replace (temp in the same dir + fsync + rename + fsync dir) for files that change (index,
  CRL, chain), so a reader or a crash sees the old or the new file, never half of one;
- exclusive create (link(), which fails on an existing name) for keys, so an existing key is
  never overwritten, whatever the bug or race;
- a ``Stage`` that records every write instead of doing it, so a rollout can plan in memory
  (``pyinfra --dry``, a declined prompt) and commit the same bytes later, or never.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
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


class Stage:
    """Writes recorded in order instead of done, readable as if done; ``commit`` does them.

    While a stage is active (``staged``), every write helper of this module (and of
    ``iotfleet.atomic``) records into it: the control machine's state stays byte-identical
    until ``commit``, which replays the same operations, with the same crash-safety, for real.
    """

    def __init__(self) -> None:
        self._ops: list[Callable[[], None]] = []
        self._files: dict[Path, bytes | None] = {}  # None: removed
        # Files the plan was computed from, with their digest then (None: absent): the commit
        # refuses if one changed since (another run committed in between).
        self._guards: dict[Path, str | None] = {}
        self.lock_path: Path | None = None  # held (exclusive) during the commit
        self.committed = False
        self._failure: Exception | None = None

    def guard(self, path: Path) -> None:
        """Remember ``path`` as read now; the commit refuses if it changed by then."""
        self._guards.setdefault(path, _digest_of(path))

    @property
    def empty(self) -> bool:
        return not self._ops

    def changed_paths(self) -> list[Path]:
        """Files the commit creates, replaces or removes."""
        return sorted(self._files)

    def read_bytes(self, path: Path) -> bytes:
        """``path`` as it will be after the commit (raises FileNotFoundError like a read)."""
        if path in self._files:
            data = self._files[path]
            if data is None:
                raise FileNotFoundError(
                    2, "No such file or directory (removed by this run)", str(path)
                )
            return data
        return path.read_bytes()

    def has(self, path: Path) -> bool:
        """True when the commit writes or removes ``path``."""
        return path in self._files

    def exists(self, path: Path) -> bool:
        if path in self._files:
            return self._files[path] is not None
        return path.exists()

    def record(
        self,
        op: Callable[[], None],
        *,
        path: Path | None = None,
        data: bytes | None = None,
        removed: bool = False,
    ) -> None:
        if self.committed:
            raise StateError("internal error: a write after the run's state was committed")
        self._ops.append(op)
        if path is not None:
            self._files[path] = None if removed else data

    def rename_tree(self, source: Path, target: Path) -> None:
        """Files staged under ``source`` are read under ``target`` from now on."""
        for path in [p for p in self._files if p.is_relative_to(source)]:
            self._files[target / path.relative_to(source)] = self._files.pop(path)

    def commit(self) -> None:
        """Do every recorded write, in order (once; the stage is inactive from here on)."""
        global _ACTIVE
        if self.committed:
            return
        if self._failure is not None:
            raise self._failure  # one attempt only: a half-done replay is not replayed again
        previous, _ACTIVE = _ACTIVE, None
        try:
            if self.lock_path is None:
                self._replay()
            else:
                ensure_dir(self.lock_path.parent)
                with state_lock(self.lock_path):
                    self._replay()
        except Exception as exc:
            self._failure = exc
            raise
        finally:
            _ACTIVE = previous if previous is not self else None

    def verify_unchanged(self) -> None:
        """Refuse (StateError) if a file the plan was computed from changed since it was read.

        For a plan with nothing to commit: what the run pushes to hosts must still be current.
        """
        if self.lock_path is None:
            self._refuse_if_changed()
            return
        with state_lock(self.lock_path, shared=True):
            self._refuse_if_changed()

    def _refuse_if_changed(self) -> None:
        changed = [p for p, digest in self._guards.items() if _digest_of(p) != digest]
        if changed:
            raise StateError(
                f"{changed[0]} changed since this run planned (another iotfleet run committed "
                "in between): nothing was written; run again to plan from the new state"
            )

    def _replay(self) -> None:
        self._refuse_if_changed()
        for op in self._ops:
            op()
        self.committed = True


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


# The stage of the running command (one per process: pyinfra loads deploy files in one thread,
# and greenlets spawned later must see the same plan).
_ACTIVE: Stage | None = None


def active_stage() -> Stage | None:
    """The stage writes go to right now, or None when they go to disk."""
    return _ACTIVE


@contextlib.contextmanager
def staged(stage: Stage) -> Iterator[Stage]:
    """Record writes into ``stage`` inside the block."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, stage
    try:
        yield stage
    finally:
        _ACTIVE = previous


def read_bytes(path: Path) -> bytes:
    """``path`` as the active stage would leave it, else as on disk."""
    return _ACTIVE.read_bytes(path) if _ACTIVE is not None else path.read_bytes()


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 when missing.

    Raises:
        StateWriteError: it could not be created (naming it).
    """
    if _ACTIVE is not None:
        if not path.is_dir():
            _ACTIVE.record(lambda: ensure_dir(path))
        return
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateWriteError(path, exc, NOT_COMMITTED) from None


def rename_tree(source: Path, target: Path) -> None:
    """Rename a directory into place (``target`` must not exist)."""
    if _ACTIVE is not None:
        _ACTIVE.rename_tree(source, target)
        _ACTIVE.record(lambda: rename_tree(source, target))
        return
    source.rename(target)


def remove_tree(path: Path) -> None:
    """Remove a directory of ours (a half-built one left by a crash)."""
    if _ACTIVE is not None:
        _ACTIVE.record(lambda: remove_tree(path))
        return
    shutil.rmtree(path, ignore_errors=True)


def remove(path: Path) -> None:
    """Remove a file if present."""
    if _ACTIVE is not None:
        _ACTIVE.record(lambda: remove(path), path=path, removed=True)
        return
    path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created/renamed files) durable."""
    if _ACTIVE is not None:
        _ACTIVE.record(lambda: fsync_dir(path))
        return
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
    if _ACTIVE is not None:
        _ACTIVE.record(
            lambda: atomic_write(path, data, mode, not_done=not_done), path=path, data=data
        )
        return
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
    if _ACTIVE is not None:
        if _ACTIVE.exists(path):
            raise StateError(f"{path} already exists: refusing to overwrite it")
        _ACTIVE.record(
            lambda: create_exclusive_durable(path, data, mode, not_done=not_done),
            path=path,
            data=data,
        )
        return
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
    if _ACTIVE is not None:
        if any(is_temp_name(name) for name in os.listdir(directory)):
            _ACTIVE.record(lambda: remove_temp_files(directory))
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

    The file is never written, so holding the lock changes no bytes in the state dir. A
    planning run (a stage is active) takes the shared lock: it reads, and creates nothing.
    """
    if shared or _ACTIVE is not None:
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
