"""The gateway simulator: a software ESP8266 gateway reading its flashed LittleFS.

- ``read_bundle(flash_file, layout) -> Bundle``: the contract's files from an emulated board's
  flash, mounted with the ESP8266 core's geometry (what the firmware does at boot).
- ``GatewaySimulator(bundle, ...)``: connects with mTLS (paho-mqtt), publishes telemetry,
  answers commands, reconnects with backoff. ``GatewaySimulator.from_flash(flash_file, ...)``
  boots from a board's flash (finishing or undoing a switch a power cut left half done,
  ``iotfleet.gateway.identity``) and stores renewals there; ``iotfleet gateway run`` is its
  command line.
"""

from __future__ import annotations

from iotfleet.gateway.backoff import Backoff
from iotfleet.gateway.flashfile import GatewayError, read_bundle, read_flash_files
from iotfleet.gateway.simulator import NOT_AUTHORIZED, GatewaySimulator, SimulatorStats

__all__ = [
    "NOT_AUTHORIZED",
    "Backoff",
    "GatewayError",
    "GatewaySimulator",
    "SimulatorStats",
    "read_bundle",
    "read_flash_files",
]
