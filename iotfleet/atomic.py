"""Crash-safe file writes: readers see the old file or the new one, never half of either.

Both helpers honour a planning run's stage (``iotfleet.pki.fsio.staged``): while one is active
they record the write for the commit instead of doing it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from iotfleet.pki import fsio
from iotfleet.pki.errors import StateError


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (temp file in the same directory, fsync, rename)."""
    stage = fsio.active_stage()
    if stage is not None:
        stage.record(lambda: write_file_atomically(path, data, mode=mode), path=path, data=data)
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def write_new_file(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` unless it exists; never overwrites. True if created.

    A staged write that finds the file created by someone else at commit time fails the commit
    (what was planned from it would not match).
    """
    stage = fsio.active_stage()
    if stage is not None:
        if stage.exists(path):
            return False

        def create() -> None:
            if not write_new_file(path, data, mode=mode):
                raise StateError(
                    f"{path} was created by another run since this one planned: nothing more "
                    "was written; run again"
                )

        stage.record(create, path=path, data=data)
        return True
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # atomic create-if-absent
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_directory(path.parent)
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
