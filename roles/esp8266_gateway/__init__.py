"""ESP8266 gateway role: flash every board of a flash station with firmware and its own secrets.

The flashing runs where the serial ports are reachable from: the control machine. A station is
``@local`` (boards on USB here), or any host whose boards are reachable as network serial ports
(``rfc2217://station:4000`` from esptool's ``esp_rfc2217_server``, or ``socket://``).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from iotfleet.context import FleetContext
from iotfleet.model import FlashStation
from roles.esp8266_gateway.defaults import DEFAULTS
from roles.esp8266_gateway.operations import flash_station_boards


def station_of(ctx: FleetContext, name: str) -> FlashStation:
    return next(s for s in ctx.fleet.stations if s.name == name)


@deploy("ESP8266 gateways", data_defaults=DEFAULTS)
def deploy_gateways(ctx: FleetContext) -> None:
    """Flash the boards of this flash station (firmware at 0x0, secrets image at its offset)."""
    station = station_of(ctx, host.name)
    if not station.boards:
        host.noop("no boards listed (espgw_boards)")
        return
    flash_station_boards(
        name=f"Flash {len(station.boards)} ESP8266 board(s): firmware and per-device secrets",
        ctx=ctx,
        station=station,
    )
