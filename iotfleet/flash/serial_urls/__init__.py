"""pyserial URL handlers of iotfleet, searched before pyserial's own (see ``install``)."""

from __future__ import annotations

import serial

PACKAGE = __name__


def install() -> None:
    """Make ``serial.serial_for_url`` (and so esptool) use these handlers first."""
    if PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.insert(0, PACKAGE)
