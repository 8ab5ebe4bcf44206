"""ESP8266 gateway role: flash every board of a flash station with firmware and its own secrets.

esptool runs on the control machine. A station is ``@local`` (boards on this machine's USB), or
any SSH host with boards on its own device paths (``/dev/ttyUSB0``): each such board is reached
through a serial relay that the rollout runs on the station over its SSH connection (pyserial's
RFC 2217 on the channel; nothing listens on the station's network). Network serial ports
(``rfc2217://``, ``socket://``) work from any station.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from iotfleet.flash.jobs import station_jobs
from iotfleet.fleet.context import FleetContext
from iotfleet.model import FlashStation
from iotfleet.roles.esp8266_gateway.operations import flash_station_boards, relays_on_station
from iotfleet.roles.fleet_context import reconciled_fleet
from iotfleet.roles.packages import install_debs
from iotfleet.roles.refusal import RolloutRefusedError

# What a station's serial relay needs (pyserial's RFC 2217 server), installed by the healing
# installer: a station whose dpkg a killed run interrupted is repaired first.
RELAY_PACKAGES = ("python3-serial",)


def refuse_bad_board_inputs(ctx: FleetContext, station: FlashStation) -> None:
    """Stop the run before any host is touched if a board cannot be flashed as listed (firmware,
    layout, Wi-Fi secrets, the stand-in image on a real device): every problem, once."""
    _, refused = station_jobs(ctx, station)
    if refused:
        problems = "\n".join(f"  - {result.message}" for result in refused)
        raise RolloutRefusedError(
            f"iotfleet: cannot flash the boards of {station.name}:\n{problems}"
        )


def station_of(ctx: FleetContext, name: str) -> FlashStation:
    return next(s for s in ctx.fleet.stations if s.name == name)


@deploy("ESP8266 gateways")
def deploy_gateways(ctx: FleetContext | None = None) -> None:
    """
    Flash the boards of this flash station: each board's flash is compared (MD5) and only
    what differs is written and verified (firmware at 0x0, the device's secrets image at its
    filesystem offset); the board's MAC is bound to its identity and the registry records
    what was flashed where. Needs iotfleet's ``[flash]`` extra.

    + ctx: the fleet of this run; default: the current pyinfra inventory, validated once, with
      its PKI reconciled (device certificates and keys)

    Runs on hosts of the inventory's ``flash_stations`` group (``@local`` or an SSH host with
    boards on its device paths). Keys: the host's ``espgw_*`` (``iotfleet keys espgw_``).

    **Example:**

    .. code:: python

        from iotfleet.roles.esp8266_gateway import deploy_gateways

        deploy_gateways()
    """
    ctx = ctx or reconciled_fleet()
    station = station_of(ctx, host.name)
    if not station.boards:
        host.noop("no boards listed (espgw_boards)")
        return
    refuse_bad_board_inputs(ctx, station)
    if relays_on_station(station):
        install_debs(
            name="Install pyserial for the serial relay (dpkg repaired first)",
            packages=RELAY_PACKAGES,
        )
    flash_station_boards(
        name=f"Flash {len(station.boards)} ESP8266 board(s): firmware and per-device secrets",
        ctx=ctx,
        station=station,
    )
