"""esptool's ESP8266 loader classes, minus the hex dump it builds for every packet it sends.

esptool's ``ESPLoader.write`` and ``command`` format the packet as a hex dump for ``--trace``
before ``trace()`` checks whether tracing is on (an f-string argument). With 16 KB data blocks
that is about a microsecond of CPU per byte sent, twice: at 460800 baud, 64 boards flashed at
once would keep several cores busy formatting text nobody reads. These subclasses send the same
bytes and read the same answers without it; with tracing on they are plain esptool.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from esptool.loader import DEFAULT_TIMEOUT, MAX_TIMEOUT
from esptool.targets.esp8266 import ESP8266ROM, ESP8266StubLoader
from esptool.util import FatalError, UnsupportedCommandError

_MAX_STRAY_RESPONSES = 100  # esptool's own limit on answers that belong to another request


class _QuietSend:
    """``write``/``command`` of ESPLoader without building the unused trace text."""

    _port: Any
    _trace_enabled: bool
    ROM_INVALID_RECV_MSG: int

    def write(self, packet: bytes) -> None:
        if self._trace_enabled:
            super().write(packet)  # type: ignore[misc]
            return
        self._port.write(
            b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"
        )

    def command(
        self,
        op: int | None = None,
        data: bytes = b"",
        chk: int = 0,
        wait_response: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[int, bytes] | None:
        if op is None or self._trace_enabled:
            return super().command(op, data, chk, wait_response, timeout)  # type: ignore[misc, no-any-return]
        saved = self._port.timeout
        wanted = min(timeout, MAX_TIMEOUT)
        if wanted != saved:
            self._port.timeout = wanted
        try:
            self.write(struct.pack("<BBHI", 0x00, op, len(data), chk) + data)
            if not wait_response:
                return None
            # As esptool: skip answers to other requests (e.g. late SYNC replies).
            for _ in range(_MAX_STRAY_RESPONSES):
                packet: bytes = self.read()  # type: ignore[attr-defined]
                if len(packet) < 8:
                    continue
                resp, op_ret, _length, value = struct.unpack("<BBHI", packet[:8])
                if resp != 1:
                    continue
                body = packet[8:]
                if op_ret == op:
                    return value, body
                if body[:1] != b"\x00" and body[1:2] == bytes([self.ROM_INVALID_RECV_MSG]):
                    time.sleep(0.2)  # the ROM repeats this answer; let it arrive, drop it
                    self.flush_input()  # type: ignore[attr-defined]
                    raise UnsupportedCommandError(self, op)
        finally:
            if wanted != saved:
                self._port.timeout = saved
        raise FatalError("Response doesn't match request.")


class QuietESP8266StubLoader(_QuietSend, ESP8266StubLoader):  # type: ignore[misc]
    """esptool's ESP8266 flasher-stub loader."""


class QuietESP8266ROM(_QuietSend, ESP8266ROM):  # type: ignore[misc]
    """esptool's ESP8266 ROM loader; ``run_stub()`` returns a ``QuietESP8266StubLoader``."""

    STUB_CLASS = QuietESP8266StubLoader
