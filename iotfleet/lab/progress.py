"""How the lab engine reports progress; the CLI renders it with rich, tests ignore it."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def task(self, description: str, total: int | None = None) -> int:
        """Start a task (``total`` steps, or open-ended); return its id."""
        ...

    def advance(self, task_id: int, description: str | None = None) -> None:
        """One step of a task is done."""
        ...

    def done(self, task_id: int, description: str | None = None) -> None:
        """The task is complete."""
        ...

    def note(self, message: str) -> None:
        """Something the user should read (a recovered host, a restarted boot...)."""
        ...


class SilentReporter:
    """Reports nothing: for tests and library use."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._next = 0

    def task(self, description: str, total: int | None = None) -> int:
        self._next += 1
        return self._next

    def advance(self, task_id: int, description: str | None = None) -> None:
        return None

    def done(self, task_id: int, description: str | None = None) -> None:
        return None

    def note(self, message: str) -> None:
        self.notes.append(message)
