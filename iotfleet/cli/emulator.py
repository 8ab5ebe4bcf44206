"""`iotfleet emulator serve ...`: one emulated ESP8266 board on a loopback port."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from iotfleet.emulator import BoardServer, Faults, FlashRangeError
from iotfleet.emulator.server import loopback_address

FLASH_SIZES = {
    "512KB": 512 * 1024,
    "1MB": 1 << 20,
    "2MB": 2 << 20,
    "4MB": 4 << 20,
    "8MB": 8 << 20,
    "16MB": 16 << 20,
}


@click.group()
def cli() -> None:
    """Emulated ESP8266 boards for the lab and tests (esptool reaches them as socket://)."""


@cli.command()
@click.option(
    "--listen",
    required=True,
    metavar="127.0.0.1:PORT",
    help="Loopback address and port to listen on (port 0 picks a free one).",
)
@click.option(
    "--flash",
    "flash_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the board's flash (created erased when missing, 0600).",
)
@click.option("--mac", required=True, help="The board's MAC address (aa:bb:cc:dd:ee:ff).")
@click.option(
    "--flash-size",
    type=click.Choice(list(FLASH_SIZES)),
    default=None,
    help="Chip size for a new flash file (default 4MB; an existing file keeps its size).",
)
@click.option(
    "--stats",
    "stats_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write counters (sessions, bytes programmed, ...) here after each session.",
)
@click.option(
    "--serial-speed",
    is_flag=True,
    help="Carry bytes no faster than a UART at the current baud rate would.",
)
@click.option(
    "--drop-after-blocks",
    type=click.IntRange(min=0),
    help="Fault: hang up when this many flash data blocks were received.",
)
@click.option(
    "--drop-after-bytes",
    type=click.IntRange(min=0),
    help="Fault: program this many bytes, then vanish in the middle of a block.",
)
@click.option(
    "--drop-times",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="How many sessions the drop fault hits before the board behaves.",
)
@click.option("--report-mac", help="Fault: answer this MAC instead of --mac (wrong board).")
@click.option("--no-answer", is_flag=True, help="Fault: accept connections, never answer.")
@click.option(
    "--stub-silent",
    is_flag=True,
    help="Fault: the ROM answers, the uploaded flasher stub never starts.",
)
def serve(
    listen: str,
    flash_file: Path,
    mac: str,
    flash_size: str | None,
    stats_file: Path | None,
    serial_speed: bool,
    drop_after_blocks: int | None,
    drop_after_bytes: int | None,
    drop_times: int,
    report_mac: str | None,
    no_answer: bool,
    stub_silent: bool,
) -> None:
    """Serve one board until SIGTERM; its flash persists in --flash."""
    try:
        host, port = loopback_address(listen)
        faults = Faults(
            drop_after_blocks=drop_after_blocks,
            drop_after_bytes=drop_after_bytes,
            drop_times=drop_times,
            report_mac=report_mac,
            silent=no_answer,
            stub_silent=stub_silent,
        )
        server = BoardServer(
            flash_file,
            mac,
            host=host,
            port=port,
            flash_size=FLASH_SIZES[flash_size] if flash_size else None,
            faults=faults,
            serial_speed=serial_speed,
            stats_file=stats_file,
            log=sys.stderr,
        )
    except (ValueError, FlashRangeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None

    def stop(signum: int, _frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"iotfleet-emulator {server.mac} listening on {server.url}", err=True)
    try:
        server.serve_forever()
    finally:
        server.close()
