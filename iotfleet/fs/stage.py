"""Plan, then commit: a ``Stage`` records control-machine writes instead of doing them.

While a stage is active (``staged``), every write helper of ``iotfleet.fs.atomic`` (and the
PKI's, ``iotfleet.pki.fsio``) records into it: the control machine's state stays byte-identical
until ``commit``, which replays the same operations, with the same crash-safety, for real. A
rollout plans in memory this way (``pyinfra --dry``, a declined prompt) and commits the same
bytes later, or never.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from iotfleet.fs.errors import PlanConflictError


class Stage:
    """Writes recorded in order instead of done, readable as if done; ``commit`` does them."""

    def __init__(self) -> None:
        self._ops: list[Callable[[], None]] = []
        self._files: dict[Path, bytes | None] = {}  # None: removed
        # Files the plan was computed from, with their digest then (None: absent): the commit
        # refuses if one changed since (another run committed in between).
        self._guards: dict[Path, str | None] = {}
        # Held during the commit (the PKI's exclusive state lock, set by whoever guards).
        self.commit_lock: Callable[[], AbstractContextManager[object]] | None = None
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
        """Add ``op`` to the commit; ``path`` reads as ``data`` (or as absent) from now on."""
        if self.committed:
            raise RuntimeError("internal error: a write after the run's state was committed")
        self._ops.append(op)
        if path is not None:
            self._files[path] = None if removed else data

    def rename_tree(self, source: Path, target: Path) -> None:
        """Files staged under ``source`` are read under ``target`` from now on."""
        for path in [p for p in self._files if p.is_relative_to(source)]:
            self._files[target / path.relative_to(source)] = self._files.pop(path)

    def commit(self) -> None:
        """Do every recorded write, in order (once; the stage is inactive from here on).

        Raises:
            PlanConflictError: a guarded file changed since it was read; nothing was written.
        """
        global _ACTIVE
        if self.committed:
            return
        if self._failure is not None:
            raise self._failure  # one attempt only: a half-done replay is not replayed again
        previous, _ACTIVE = _ACTIVE, None
        try:
            with self.commit_lock() if self.commit_lock else contextlib.nullcontext():
                self._replay()
        except Exception as exc:
            self._failure = exc
            raise
        finally:
            _ACTIVE = previous if previous is not self else None

    def verify_unchanged(self) -> None:
        """Refuse if a file the plan was computed from changed since it was read (under the
        commit lock): for a plan with nothing to commit, what the run pushes must be current.

        Raises:
            PlanConflictError: a guarded file changed since it was read.
        """
        with self.commit_lock() if self.commit_lock else contextlib.nullcontext():
            self._refuse_if_changed()

    def _refuse_if_changed(self) -> None:
        changed = [p for p, digest in self._guards.items() if _digest_of(p) != digest]
        if changed:
            raise PlanConflictError(
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
