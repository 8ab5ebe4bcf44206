"""`iotfleet gateway ...`: run a simulated gateway from a flash image, flash a station's boards,
look at what a flash holds and at the flash registry."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from iotfleet.device import DEFAULT_LAYOUT, LAYOUTS, UnknownLayoutError, flash_layout
from iotfleet.device.contract import CONFIG_FILE
from iotfleet.gateway import GatewayError, GatewaySimulator, read_bundle, read_flash_files

if TYPE_CHECKING:
    from iotfleet.fleet.cert_delivery import GatewaySeen

EXIT_FAILED = 1
EXIT_ERROR = 2


class GatewayCommandError(click.ClickException):
    exit_code = EXIT_ERROR


def _console() -> Console:
    return Console(file=sys.stderr)


def _layout_names() -> list[str]:
    return list(LAYOUTS)


def _inventory_board(inventory: Path, device: str) -> tuple[Path, str]:
    """The flash file and layout the inventory gives the board of ``device`` (lab boards)."""
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.model import InventoryError

    try:
        fleet, _ = load_fleet(inventory)
    except (InventoryError, FileNotFoundError) as exc:
        raise GatewayCommandError(str(exc)) from None
    for station in fleet.stations:
        for board in station.boards:
            if board.device == device:
                if board.flash_file is None:
                    raise GatewayCommandError(
                        f"the board of {device} (host {station.name}) has no flash_file: "
                        "only emulated boards can be run here; pass --flash FILE"
                    )
                return board.flash_file, board.layout or station.gateway.layout
    raise GatewayCommandError(f"no flash station of {inventory} lists a board for {device}")


def _resolve(
    device: str | None, flash_file: Path | None, inventory: Path | None, layout: str | None
) -> tuple[Path, str]:
    if flash_file is None:
        if device is None or inventory is None:
            raise click.UsageError("give --flash FILE, or DEVICE with --inventory INVENTORY")
        flash_file, inventory_layout = _inventory_board(inventory, device)
        layout = layout or inventory_layout
    chosen = layout or DEFAULT_LAYOUT
    try:
        flash_layout(chosen)
    except UnknownLayoutError as exc:
        raise GatewayCommandError(str(exc)) from None
    return flash_file, chosen


def _broker_option(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter("expected HOST:PORT", param_hint="--broker")
    return host, int(port)


@click.group()
def cli() -> None:
    """ESP8266 gateways: simulate one from its flash, flash a station, inspect, registry."""


_flash_option = click.option(
    "--flash",
    "flash_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Flash image of an emulated board (e.g. the lab's gateways/<name>.flash).",
)
_layout_option = click.option(
    "--layout",
    type=click.Choice(_layout_names(), case_sensitive=False),
    default=None,
    help=f"Flash layout the board was flashed with (default {DEFAULT_LAYOUT}).",
)
_inventory_option = click.option(
    "--inventory",
    "-i",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="IOTFLEET_INVENTORY",
    help="pyinfra inventory (finds DEVICE's flash file and layout).",
)


@cli.command()
@click.argument("device", required=False)
@_flash_option
@_layout_option
@_inventory_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Seconds between telemetry readings (default: from the flashed config).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many telemetry readings (default: run until Ctrl-C).",
)
@click.option(
    "--broker",
    default=None,
    metavar="HOST:PORT",
    help="Connect here instead of the brokers named in the flash.",
)
def run(
    device: str | None,
    flash_file: Path | None,
    layout: str | None,
    inventory: Path | None,
    interval: float | None,
    count: int | None,
    broker: str | None,
) -> None:
    """Run a simulated gateway: read its LittleFS from the flash, connect over mTLS, publish
    telemetry, answer commands (ping, telemetry, restart), reconnect with backoff."""
    path, chosen = _resolve(device, flash_file, inventory, layout)
    try:
        bundle = read_bundle(path, chosen)
    except GatewayError as exc:
        raise GatewayCommandError(str(exc)) from None
    if device is not None and bundle.config.device_id != device:
        raise GatewayCommandError(f"{path} holds device {bundle.config.device_id}, not {device}")
    console = _console()

    def log(line: str) -> None:
        console.print(
            f"{time.strftime('%H:%M:%S')} {bundle.config.device_id}: {line}",
            markup=False,
            highlight=False,
        )

    try:  # boots like the board; a renewed certificate is stored in the flash file
        simulator = GatewaySimulator.from_flash(
            path, chosen, telemetry_interval=interval, broker=_broker_option(broker), log=log
        )
    except GatewayError as exc:
        raise GatewayCommandError(str(exc)) from None
    log(f"read {path} ({chosen}); brokers {', '.join(f'{h}:{p}' for h, p in simulator.targets)}")
    try:
        stats = simulator.run(max_telemetry=count)
    except KeyboardInterrupt:
        simulator.stop(timeout=0)
        stats = simulator.stats
    log(
        f"stopped: {stats.connects} connection(s), {stats.telemetry_sent} reading(s), "
        f"{stats.commands_handled} command(s)"
    )
    if stats.connects == 0:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("device", required=False)
@_flash_option
@_layout_option
@_inventory_option
def inspect(
    device: str | None, flash_file: Path | None, layout: str | None, inventory: Path | None
) -> None:
    """List the files a board's flash holds (names and sizes) and its configuration; secrets
    are never printed."""
    path, chosen = _resolve(device, flash_file, inventory, layout)
    try:
        files = read_flash_files(path, chosen)
    except GatewayError as exc:
        raise GatewayCommandError(str(exc)) from None
    table = Table(title=f"{path} ({chosen})")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name, content in sorted(files.items()):
        table.add_row(name, str(len(content)))
    console = Console()
    console.print(table)
    if CONFIG_FILE in files:
        console.print_json(files[CONFIG_FILE].decode(errors="replace"))


@cli.command()
@_inventory_option
@click.option("--station", default=None, help="Flash station (default: every station).")
@click.option(
    "--reenroll",
    is_flag=True,
    default=None,
    help="Accept a new board (MAC) for enrolled devices (espgw_reenroll).",
)
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option(
    "--firmware-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where relative firmware paths start (default: .).",
)
def flash(
    inventory: Path | None,
    station: str | None,
    reenroll: bool | None,
    no_progress: bool,
    firmware_dir: Path | None,
) -> None:
    """Flash the boards of the inventory's flash stations (the same engine deploy/gateways.py
    uses; the PKI must have issued the device certificates). Boards on an SSH station's device
    paths are reached with the OpenSSH client and the host's ssh_* keys."""
    from iotfleet.flash import flash_station
    from iotfleet.flash.station_link import CommandStationLink, ssh_argv
    from iotfleet.fleet.context import FleetContext
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.fleet.secrets import SecretError
    from iotfleet.model import InventoryError
    from iotfleet.model.build import LOCAL_STATION
    from iotfleet.model.ssh import SshEndpointError, ssh_endpoint

    if inventory is None:
        raise click.UsageError("give --inventory INVENTORY (or $IOTFLEET_INVENTORY)")
    try:
        fleet, hosts = load_fleet(inventory)
        ctx = FleetContext.for_fleet(fleet, read_only=True)
    except (InventoryError, SecretError, FileNotFoundError) as exc:
        raise GatewayCommandError(str(exc)) from None
    stations = [s for s in fleet.stations if station is None or s.name == station]
    if not stations:
        raise GatewayCommandError(f"no flash station {station!r} in {inventory}")
    results = []
    for chosen in stations:
        link = None
        if chosen.name != LOCAL_STATION:
            data: dict[str, object] = hosts.get_host(chosen.name).data.dict()  # type: ignore[no-untyped-call]
            try:
                endpoint = ssh_endpoint(chosen.name, data)
            except SshEndpointError as exc:
                raise GatewayCommandError(str(exc)) from None
            link = CommandStationLink(chosen.name, ssh_argv(endpoint))
        results += flash_station(
            ctx,
            chosen,
            base_dir=firmware_dir,
            reenroll=reenroll,
            progress=not no_progress,
            link=link,
        )
    table = Table(title=f"flashed ({ctx.registry_path})")
    for column in ("device", "port", "result", "MAC", "s", "detail"):
        table.add_column(column)
    for result in results:
        style = "green" if result.ok else "red"
        table.add_row(
            result.device_id,
            result.port,
            f"[{style}]{result.status}[/{style}]",
            result.mac or "-",
            f"{result.duration:.1f}",
            result.message,
        )
    Console().print(table)
    if not all(result.ok for result in results):
        sys.exit(EXIT_FAILED)


@cli.command()
@_inventory_option
@click.option("--history", is_flag=True, help="Every attempt, not only the latest per device.")
def registry(inventory: Path | None, history: bool) -> None:
    """What was flashed where: device, MAC, port, firmware and image digests, result."""
    from iotfleet.flash import FlashRegistry
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.fleet.paths import fleet_dir
    from iotfleet.model import InventoryError

    if inventory is None:
        raise click.UsageError("give --inventory INVENTORY (or $IOTFLEET_INVENTORY)")
    try:
        fleet, _ = load_fleet(inventory)
    except (InventoryError, FileNotFoundError) as exc:
        raise GatewayCommandError(str(exc)) from None
    path = fleet_dir(fleet.name) / "flash-registry.sqlite"
    if not path.exists():
        raise GatewayCommandError(f"no flash registry yet at {path}: nothing was flashed")
    store = FlashRegistry(path)
    try:
        records = store.history()
    finally:
        store.close()
    if not history:
        latest = {r.device_id: r for r in records}
        records = [latest[d] for d in sorted(latest)]
    table = Table(title=str(path))
    for column in (
        "time",
        "device",
        "station",
        "port",
        "MAC",
        "result",
        "firmware",
        "image",
        "cert serial",
    ):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.at.strftime("%Y-%m-%d %H:%M:%S"),
            r.device_id,
            r.station,
            r.port,
            r.mac or "-",
            r.result,
            (r.firmware_sha256 or "-")[:12],
            (r.image_sha256 or "-")[:12],
            (r.cert_serial or "-")[:16],
        )
    Console().print(table)


@cli.command("status")
@_inventory_option
@click.option(
    "--settle",
    type=click.FloatRange(min=0.1),
    default=1.5,
    show_default=True,
    help="Seconds to collect the retained statuses on each broker.",
)
def status_command(inventory: Path | None, settle: float) -> None:
    """Which gateways are alive: per device, online or offline (since when), on which broker,
    the certificate it uses (serial, days left) and its firmware, from the retained status each
    gateway publishes. Read with iotfleet's delivery identity, which may read status topics
    only. Exit 1 if a broker could not be read."""
    from datetime import UTC, datetime

    from iotfleet.fleet.cert_delivery import DeliveryError, gateway_statuses
    from iotfleet.fleet.context import FleetContext
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.fleet.secrets import SecretError
    from iotfleet.model import InventoryError
    from iotfleet.pki import PkiError

    if inventory is None:
        raise click.UsageError("give --inventory INVENTORY (or $IOTFLEET_INVENTORY)")
    try:
        fleet, _ = load_fleet(inventory)
        ctx = FleetContext.for_fleet(fleet, read_only=True)
        gateways, problems = gateway_statuses(ctx, settle=settle)
        not_after = {r.serial_hex: r.not_after for r in ctx.pki.records()}
    except (InventoryError, SecretError, FileNotFoundError, DeliveryError, PkiError) as exc:
        raise GatewayCommandError(str(exc)) from None
    now = datetime.now(UTC)
    table = Table(title=f"gateways of fleet {fleet.name}", title_justify="left")
    for column in ("device", "state", "since", "broker", "cert serial", "days left", "firmware"):
        table.add_column(column, no_wrap=column != "broker")
    for g in sorted(gateways, key=lambda item: item.device):
        style = {"online": "green", "offline": "yellow"}.get(g.state, "red")
        expires = not_after.get(g.cert_serial or "")
        days = "-" if expires is None else str((expires - now).days)
        table.add_row(
            g.device, f"[{style}]{g.state}[/]", since_text(g), ", ".join(g.brokers) or "-",
            (g.cert_serial or "-")[:12], days, g.firmware or "-",
        )  # fmt: skip
    Console().print(table)
    for problem in problems:
        _console().print(f"[red]{problem}[/]")
    if problems:
        sys.exit(EXIT_FAILED)


def since_text(gateway: GatewaySeen) -> str:
    """The status table's "since" cell: since when it is online (or offline, when it said
    goodbye); for a gateway whose will the broker published, when it was last seen, which is
    when it last came online (the will is fixed at connect time)."""
    if gateway.since is not None:
        return f"{gateway.since:%Y-%m-%d %H:%M}"
    if gateway.state == "offline" and gateway.last_seen is not None:
        return f"last seen {gateway.last_seen:%Y-%m-%d %H:%M}"
    return "-"
