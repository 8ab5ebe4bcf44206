"""Exceptions of ``iotfleet.fs``: each names the file and says what was not done."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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


class LockBusyError(Exception):
    """A lock file is held by another run: after ``waited`` seconds (0: refused at once).

    ``holders`` are the processes holding it, as the kernel lists them (empty when it does not
    say, e.g. from another PID namespace); ``held_by`` says it in words.
    """

    def __init__(self, path: Path, holders: Sequence[tuple[int, str]], waited: float) -> None:
        self.path = path
        self.holders = tuple(holders)
        self.waited = waited
        super().__init__(path, self.holders, waited)

    @property
    def held_by(self) -> str:
        """``held by pid 4242 (iotfleet)``, or ``held by another process`` when unknown."""
        if not self.holders:
            return "held by another process"
        named = [f"pid {pid} ({name})" if name else f"pid {pid}" for pid, name in self.holders]
        return "held by " + ", ".join(named)

    def __str__(self) -> str:
        waited = f" for more than {self.waited:g}s" if self.waited else ""
        return f"{self.path} is {self.held_by}{waited}"


class PlanConflictError(Exception):
    """A staged plan cannot be committed as planned: what it was computed from changed since
    (another run committed in between). The commit stops there; the message says what of it
    was written (nothing, when the state it read changed)."""
