"""Flashing ESP8266 gateways with esptool 5: identity binding, skip-unchanged, parallel, registry.

Public API (what ``roles/esp8266_gateway`` calls):
- ``flash_station(ctx, station, ...) -> list[BoardResult]``: every board of a flash station.
- ``station_jobs(ctx, station, ...) -> (jobs, failures)``: the work, built from the fleet.
- ``flash_boards(jobs, registry, *, parallel, reenroll, progress, options) -> list[BoardResult]``.
- ``FlashRegistry(ctx.registry_path)``: what was flashed where; MAC enrollments.
"""

from __future__ import annotations

from iotfleet.flash.binding import check_binding
from iotfleet.flash.engine import FlashOptions, flash_board, flash_boards, flash_station
from iotfleet.flash.errors import FailureKind, FlashError
from iotfleet.flash.jobs import BoardResult, FlashJob, Region, station_jobs
from iotfleet.flash.registry import Enrollment, FlashRecord, FlashRegistry

__all__ = [
    "BoardResult",
    "Enrollment",
    "FailureKind",
    "FlashError",
    "FlashJob",
    "FlashOptions",
    "FlashRecord",
    "FlashRegistry",
    "Region",
    "check_binding",
    "flash_board",
    "flash_boards",
    "flash_station",
    "station_jobs",
]
