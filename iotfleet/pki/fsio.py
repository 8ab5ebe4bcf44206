"""The PKI's file-system rules, on ``iotfleet.fs``: its state lock, its writes and their errors.

Why each piece:
- one flock per state dir so concurrent runs (two deploys, a deploy and a manual revoke)
  serialize instead of both issuing; a planning run takes it shared (it reads, creates nothing);
- atomic replace (``iotfleet.fs.atomic``) for files that change (index, CRL, chain), so a reader
  or a crash sees the old or the new file, never half of one;
- exclusive create for keys, so an existing key is never overwritten, whatever the bug or race;
- every write here honours the active ``iotfleet.fs.stage.Stage``, so a rollout can plan in
  memory (``pyinfra --dry``, a declined prompt) and commit the same bytes later, or never;
- failures are ``StateWriteError`` (a ``StateError`` and a ``WriteError``) saying what of the
  run was not done.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from iotfleet.fs import atomic, locks
from iotfleet.fs.errors import LockBusyError, WriteError
from iotfleet.fs.stage import active_stage
from iotfleet.pki.errors import StateError, StateWriteError

DIR_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
# Temp files of iotfleet before ``iotfleet.fs.atomic`` named them: ``.tmp-<name>.<random>``.
_OLD_TEMP_PREFIX = ".tmp-"
# What a failed write leaves undone, unless the caller knows better (see save_index).
NOT_COMMITTED = (
    "this run stopped before its commit (index.json): nothing of it is issued, "
    "revoked or re-signed; free space or fix permissions and run again"
)
_NOT_LOCKED = (
    "the PKI was not locked, so nothing of it was changed; fix permissions (or free space) "
    "and run again"
)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 when missing.

    Raises:
        StateWriteError: it could not be created (naming it).
    """
    stage = active_stage()
    if stage is not None:
        if not path.is_dir():
            stage.record(lambda: ensure_dir(path))
        return
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateWriteError(path, exc, NOT_COMMITTED) from None


def rename_tree(source: Path, target: Path) -> None:
    """Rename a directory into place (``target`` must not exist)."""
    stage = active_stage()
    if stage is not None:
        stage.rename_tree(source, target)
        stage.record(lambda: rename_tree(source, target))
        return
    source.rename(target)


def remove_tree(path: Path) -> None:
    """Remove a directory of ours (a half-built one left by a crash)."""
    stage = active_stage()
    if stage is not None:
        stage.record(lambda: remove_tree(path))
        return
    shutil.rmtree(path, ignore_errors=True)


def remove(path: Path) -> None:
    """Remove a file if present."""
    stage = active_stage()
    if stage is not None:
        stage.record(lambda: remove(path), path=path, removed=True)
        return
    path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created/renamed/removed files) durable."""
    stage = active_stage()
    if stage is not None:
        stage.record(lambda: fsync_dir(path))
        return
    atomic.fsync_dir(path)


def atomic_write(
    path: Path, data: bytes, mode: int = PUBLIC_MODE, *, not_done: str = NOT_COMMITTED
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises:
        StateWriteError: naming ``path`` and ``not_done``; ``path`` is as it was, no temp file.
    """
    atomic.write_file_atomically(
        path, data, mode=mode, not_done=not_done, dir_mode=DIR_MODE, error=StateWriteError
    )


def create_exclusive_durable(
    path: Path, data: bytes, mode: int, *, not_done: str = NOT_COMMITTED
) -> None:
    """Create ``path`` complete or not at all, never replacing an existing file (CA keys).

    Raises:
        StateError: ``path`` exists. StateWriteError: the write failed (nothing was created).
    """
    created = atomic.write_file_atomically(
        path, data, mode=mode, overwrite=False, not_done=not_done, dir_mode=DIR_MODE,
        error=StateWriteError,
    )  # fmt: skip
    if not created:
        raise StateError(f"{path} already exists: refusing to overwrite it")


def is_temp_name(name: str) -> bool:
    """True for names of our temp files (``iotfleet.fs.atomic``'s, or an older iotfleet's)."""
    return atomic.is_temp_name(name) or name.startswith(_OLD_TEMP_PREFIX)


@contextlib.contextmanager
def state_lock(lock_path: Path, *, shared: bool = False, timeout: float = 600.0) -> Iterator[None]:
    """Hold the state dir's lock: exclusive for writers (the dir and an empty lock file are
    created if missing), shared for readers (who need no write access: without a lock file
    there is nothing to wait for). A planning run (a stage is active) takes it shared: it
    reads, and creates nothing.

    Raises:
        StateError: another run held it for more than ``timeout`` seconds (naming it).
        StateWriteError: the exclusive lock could not be created.
    """
    shared = shared or active_stage() is not None
    if not shared:
        ensure_dir(lock_path.parent)
    try:
        held = locks.acquire(lock_path, shared=shared, timeout=timeout, mode=KEY_MODE)
    except LockBusyError as busy:
        raise StateError(
            f"another iotfleet PKI run has held {lock_path} for more than {timeout:g}s "
            f"({busy.held_by}); is a deploy still running?"
        ) from None
    except WriteError as exc:
        raise StateWriteError(lock_path, exc, _NOT_LOCKED) from None
    with held:
        yield
