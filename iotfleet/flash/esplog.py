"""esptool's output, routed to the log of the board each thread is flashing.

esptool logs through one process-wide logger; with boards flashed in parallel threads its lines
would interleave on the terminal. While ``routed_esptool_log()`` is active, each thread's
esptool output goes to the sink it registered with ``board_sink`` (its board's log file).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from esp_pylib.logger import EspLog, EspLogBase

Sink = Callable[[str], None]

_local = threading.local()
_install_lock = threading.Lock()
_users = 0
_previous: EspLogBase | None = None


class _RoutedLog(EspLogBase):
    """Writes each message to the calling thread's sink; drops it when the thread has none."""

    def _emit(self, *args: Any, end: str = "\n") -> None:
        sink: Sink | None = getattr(_local, "sink", None)
        if sink is not None:
            sink(" ".join(str(a) for a in args) + end)

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._emit(*args, end=str(kwargs.get("end", "\n")))

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self._emit("ERROR:", *args)

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self._emit("WARNING:", *args)

    def note(self, *args: Any) -> None:
        self._emit("NOTE:", *args)

    def hint(self, *args: Any) -> None:
        self._emit("HINT:", *args)

    def debug(self, *args: Any) -> None:
        pass

    def set_verbosity(self, mode: int | str) -> None:
        pass

    def progress_bar(
        self,
        cur_iter: int,
        total_iters: int,
        prefix: str = "",
        suffix: str = "",
        bar_length: int = 30,
    ) -> None:
        pass  # iotfleet draws its own progress

    # esptool's own logger has these; keep callers that expect them working.
    def warning(self, message: str, suggestion: str | None = None) -> None:
        self.warn(message)

    def error(self, message: str, suggestion: str | None = None) -> None:
        self.err(message)


@contextmanager
def routed_esptool_log() -> Iterator[None]:
    """Install the routing logger for the duration of the block (nesting is fine)."""
    global _users, _previous
    with _install_lock:
        if _users == 0:
            _previous = EspLog.instance
            EspLog.instance = _RoutedLog()
        _users += 1
    try:
        yield
    finally:
        with _install_lock:
            _users -= 1
            if _users == 0:
                EspLog.instance = _previous
                _previous = None


@contextmanager
def board_sink(sink: Sink) -> Iterator[None]:
    """esptool output of the current thread goes to ``sink`` within the block."""
    old = getattr(_local, "sink", None)
    _local.sink = sink
    try:
        yield
    finally:
        _local.sink = old
