"""Progress of boards flashed in parallel: one rich line per board, or nothing."""

from __future__ import annotations

import sys
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class BoardProgress(Protocol):
    """What the engine reports about one board while it works on it."""

    def stage(self, text: str) -> None: ...
    def expect(self, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finish(self, text: str, ok: bool) -> None: ...


class NoProgress:
    def stage(self, text: str) -> None:
        pass

    def expect(self, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self, text: str, ok: bool) -> None:
        pass


def flash_progress(console: Console | None = None) -> Progress:
    """The rich display ``flash_boards`` draws when asked for progress (on stderr)."""
    return Progress(
        TextColumn("[bold]{task.fields[device]}", justify="left"),
        TextColumn("[dim]{task.fields[port]}"),
        BarColumn(bar_width=24),
        DownloadColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[state]}"),
        console=console or Console(file=sys.stderr),
        transient=False,
    )


class RichBoardProgress:
    """One board's line in a shared rich ``Progress`` (rich serialises threads itself)."""

    def __init__(self, progress: Progress, device: str, port: str) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task(
            device, total=None, device=device, port=port, state="waiting"
        )

    def stage(self, text: str) -> None:
        self._progress.update(self._task, state=text)

    def expect(self, total_bytes: int) -> None:
        self._progress.update(self._task, total=max(total_bytes, 1), completed=0)

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def finish(self, text: str, ok: bool) -> None:
        task = next((t for t in self._progress.tasks if t.id == self._task), None)
        total = task.total if task is not None and task.total else 1
        style = "green" if ok else "bold red"
        self._progress.update(
            self._task, total=total, completed=total, state=f"[{style}]{escape(text)}[/{style}]"
        )
