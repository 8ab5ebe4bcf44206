"""The flashing operation: plan by comparing every board's flash, then write what differs."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, operation
from rich.console import Console

from iotfleet.flash import BoardResult, flash_station
from iotfleet.flash.station_link import ParamikoStationLink, StationLink, is_device_path
from iotfleet.fleet.context import FleetContext
from iotfleet.model import FlashStation
from iotfleet.model.build import LOCAL_STATION


class GatewayFlashError(Exception):
    """One or more boards are not provisioned; the message names each and why."""


@operation()
def flash_station_boards(ctx: FleetContext, station: FlashStation) -> Generator[Any, None, None]:
    """Flash the station's boards whose firmware or secrets differ from what they should hold.

    Planning connects to every board and compares MD5 digests (nothing is written or
    recorded), so a rollout that has nothing to do reports no change and `pyinfra --dry` shows
    what would be flashed. A board found to match while its registry entry says otherwise is
    a change too: executing records what the board holds. A board that fails does not stop
    the others; the operation fails at the end, naming every board that is not provisioned.
    """
    planned = flash_station(ctx, station, dry_run=True, progress=False, link=_link(station))
    failed = [r for r in planned if not (r.ok or r.status == "outdated")]
    outdated = [r for r in planned if r.status == "outdated"]
    stale = [r for r in planned if r.registry_stale]
    if not failed and not outdated and not stale:
        host.noop(f"{len(planned)} board(s) hold their current firmware and secrets")
        return
    # Boards that match but whose registry entry says otherwise (a run refused or cut short
    # earlier): executing reads their MD5s again and records what it finds, writing nothing.
    yield FunctionCommand(_flash, (ctx, station), {})


def relays_on_station(station: FlashStation) -> bool:
    """Whether boards of ``station`` are on its own device paths (reached through a relay)."""
    return station.name != LOCAL_STATION and any(is_device_path(b.port) for b in station.boards)


def _link(station: FlashStation) -> StationLink | None:
    """The rollout's own SSH connection to the station, for its serial relays."""
    if not relays_on_station(station):
        return None
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    return ParamikoStationLink(station.name, transport) if transport is not None else None


def _flash(ctx: FleetContext, station: FlashStation) -> None:
    results = flash_station(ctx, station, progress=sys.stderr.isatty(), link=_link(station))
    console = Console(stderr=True, highlight=False)
    for result in results:
        console.print(f"    [{station.name}] {_describe(result)}")
    failed = [r for r in results if not r.ok]
    if failed:
        raise GatewayFlashError(
            f"{len(failed)} of {len(results)} board(s) not provisioned by this run: "
            + "; ".join(f"{r.device_id} on {r.port}: {r.message}" for r in failed)
        )


def _describe(result: BoardResult) -> str:
    if result.status == "flashed":
        written = ", ".join(result.regions_written)
        return (
            f"{result.device_id} ({result.port}, MAC {result.mac}): flashed {written}, "
            f"{result.bytes_written} bytes verified in {result.duration:.1f} s"
        )
    if result.status == "unchanged":
        return f"{result.device_id} ({result.port}): unchanged"
    return f"{result.device_id} ({result.port}): {result.status}: {result.message}"
