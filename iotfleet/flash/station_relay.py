"""The serial relay that runs ON a flash station (sent over SSH, run by the station's python3).

``python3 -c <this file> DEVICE`` opens one serial device exclusively and serves it as RFC 2217
(pyserial's PortManager) on its stdin/stdout, which is the SSH channel the control machine
opened. esptool on the control machine then drives the board as an ``rfc2217://`` port: baud
changes and DTR/RTS resets reach the real UART, and no port is ever opened on the station's
network (``esp_rfc2217_server`` listens on every interface, without authentication).

Protocol: the first line on stdout is ``OK`` or ``ERROR <kind> <message>``; after ``OK`` the
stream is RFC 2217 until stdin closes. Only python3 and pyserial (Debian: python3-serial) are
needed on the station; this file must stay standard library + pyserial.
"""

from __future__ import annotations

import errno
import os
import select
import sys
from typing import Any

# Errors a port without modem control lines gives for DTR/RTS/break (ptys, some adapters).
_NO_MODEM_LINES = (errno.ENOTTY, errno.EINVAL)


def _say(line: str) -> None:
    _write_all(1, (line.replace("\n", " ") + "\n").encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Stdout:
    """PortManager's "connection": the SSH channel, i.e. our stdout."""

    def write(self, data: bytes) -> None:
        _write_all(1, data)


def _tolerant_port_class(serial: Any) -> Any:
    class TolerantSerial(serial.Serial):  # type: ignore[misc]
        """A port whose missing modem lines do not end the session (esptool still resets
        boards whose adapter has them)."""

        def _update_dtr_state(self) -> None:
            _tolerate(super()._update_dtr_state)

        def _update_rts_state(self) -> None:
            _tolerate(super()._update_rts_state)

        def _update_break_state(self) -> None:
            _tolerate(super()._update_break_state)

        # Input lines read as inactive when the port has none (RFC 2217 reports them).
        cts = property(lambda self: bool(_tolerate(lambda: serial.Serial.cts.fget(self))))
        dsr = property(lambda self: bool(_tolerate(lambda: serial.Serial.dsr.fget(self))))
        ri = property(lambda self: bool(_tolerate(lambda: serial.Serial.ri.fget(self))))
        cd = property(lambda self: bool(_tolerate(lambda: serial.Serial.cd.fget(self))))

    return TolerantSerial


def _tolerate(action: Any) -> Any:
    try:
        return action()
    except OSError as exc:
        if exc.errno not in _NO_MODEM_LINES:
            raise
        return None


def _open(serial: Any, device: str) -> Any:
    port = _tolerant_port_class(serial)()
    port.port = device
    port.baudrate = 115200
    port.timeout = 0
    port.exclusive = True  # flock: a second flasher on this station is told the port is busy
    port.open()
    return port


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        _say("ERROR usage relay needs exactly one device path")
        return 2
    device = argv[1]
    try:
        import serial
        from serial import rfc2217
    except ImportError:
        _say("ERROR setup pyserial is not installed on this station (Debian: python3-serial)")
        return 3
    if not os.path.exists(device):
        _say(f"ERROR port {device} does not exist on this station (is the board plugged in?)")
        return 2
    try:
        port = _open(serial, device)
    except serial.SerialException as exc:
        busy = exc.errno in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in str(exc)
        kind = "busy" if busy else "port"
        reason = "another program holds it" if busy else str(exc)
        _say(f"ERROR {kind} cannot open {device}: {reason}")
        return 2
    _say("OK")
    manager = rfc2217.PortManager(port, _Stdout())
    try:
        _relay(port, manager)
    except serial.SerialException as exc:
        sys.stderr.write(f"relay: {device}: {exc}\n")
        return 1
    finally:
        port.close()
    return 0


def _relay(port: Any, manager: Any) -> None:
    device_fd = port.fileno()
    while True:
        readable, _, _ = select.select([0, device_fd], [], [], 0.5)
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                return  # the control machine closed the channel: done
            port.write(b"".join(manager.filter(data)))
        if device_fd in readable:
            data = port.read(port.in_waiting or 1)
            if data:
                _write_all(1, b"".join(manager.escape(data)))
        manager.check_modem_lines()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
