"""A log file per board: what iotfleet and esptool said while flashing it (never secrets)."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def board_log_path(log_dir: Path, station: str, device_id: str) -> Path:
    """``<log_dir>/<station>/<device>.log`` with names safe as file names (``@local``...)."""
    return log_dir / _UNSAFE.sub("_", station).strip("_.") / f"{_UNSAFE.sub('_', device_id)}.log"


class BoardLog:
    """Appends timestamped lines to one board's log (0600; the directory 0700).

    A log that cannot be written (disk full, permission) never stops the flash: logging stops
    and ``problem`` says why, in one line naming the file.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.problem: str | None = None
        self._partial = ""
        self._lock = threading.Lock()
        self._handle = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                self._failed(exc)
            else:
                self._handle = os.fdopen(fd, "a", encoding="utf-8")

    def _failed(self, exc: OSError) -> None:
        self.problem = f"cannot write {self.path}: {exc.strerror}; this board's log is incomplete"
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):  # its buffer is what could not be written
                handle.close()

    def line(self, text: str) -> None:
        """One line of iotfleet's own."""
        self.write(text + "\n")

    def write(self, text: str) -> None:
        """Raw output (esptool's, which may come in pieces); complete lines get a timestamp."""
        if self._handle is None:
            return
        with self._lock:
            pending = self._partial + text
            *lines, self._partial = pending.split("\n")
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
            try:
                for line in lines:
                    if line.strip():
                        self._handle.write(f"{stamp} {line.rstrip()}\n")
                self._handle.flush()
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        if self._handle is not None:
            if self._partial.strip():
                self.write("\n")
            handle, self._handle = self._handle, None
            if handle is not None:
                try:
                    handle.close()
                except OSError as exc:
                    self._failed(exc)

    def __enter__(self) -> BoardLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
