"""``rfc2217://`` ports that renegotiate line settings only when they change.

pyserial's RFC 2217 client sends baud rate, data bits, parity and stop bits to the server and
waits (polling every 50 ms) for the answers whenever *any* setting changes - the read timeout
too. esptool sets the timeout around every command, so each command cost about 0.3 s over a
relay or esp_rfc2217_server. The timeout only matters on this side; here it is applied
locally, and the line settings are sent when they really change (e.g. the switch to 460800).
Acknowledgements of DTR/RTS changes and purges are awaited by polling every 2 ms instead of
50 ms: esptool's reset sequence toggles those lines a dozen times per connection. Closing
skips pyserial's 0.3 s pause.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from serial import SerialException, rfc2217

_POLL = 0.002  # seconds


class Serial(rfc2217.Serial):  # type: ignore[misc]
    _applied: tuple[Any, ...] | None = None

    def _reconfigure_port(self) -> None:
        if self._write_timeout is not None:
            # As pyserial: esptool sets a write timeout, expects this, and sets it back.
            raise NotImplementedError("write_timeout is currently not supported")
        line = (
            self._baudrate,
            self._bytesize,
            self._parity,
            self._stopbits,
            self._rtscts,
            self._xonxoff,
        )
        if line == self._applied:
            return
        super()._reconfigure_port()
        self._applied = line

    def rfc2217_set_control(self, value: bytes) -> None:
        if self._ignore_set_control_answer:
            super().rfc2217_set_control(value)
            return
        self._acknowledged("control", value)

    def rfc2217_send_purge(self, value: bytes) -> None:
        self._acknowledged("purge", value)

    def _acknowledged(self, option: str, value: bytes) -> None:
        item = self._rfc2217_options[option]
        item.set(value)
        deadline = time.monotonic() + self._network_timeout
        while not item.is_ready():
            if time.monotonic() > deadline:
                raise SerialException(f"timeout while waiting for option {item.name!r}")
            time.sleep(_POLL)

    def close(self) -> None:
        # As pyserial's, minus its 0.3 s pause "for quick reconnects": a board is reopened by
        # the next flash, not within milliseconds, and the pause is paid for every board.
        self._applied = None
        self.is_open = False
        sock: socket.socket | None = getattr(self, "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        reader: Any = getattr(self, "_thread", None)
        if reader is not None:
            reader.join(7)
            self._thread = None
        self._socket = None
