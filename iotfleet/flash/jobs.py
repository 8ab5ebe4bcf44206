"""What to flash where: jobs built from the fleet, and what came of each.

``station_jobs`` turns one flash station's boards into ``FlashJob``s (firmware at 0x0, the
device's filesystem image at its layout's offset); a board whose inputs are bad (unknown layout,
missing firmware, Wi-Fi passphrase, secrets too big, ...) becomes a failed ``BoardResult``
instead, so the other boards are still flashed.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from iotfleet.device import DeviceImageError, board_layout, build_device_image
from iotfleet.device.firmware_stub import DEFAULT_PATH, IMAGE_MAGIC, is_stand_in
from iotfleet.flash.errors import FailureKind
from iotfleet.flash.registry import Result
from iotfleet.fleet.context import FleetContext
from iotfleet.model import Board, FlashStation
from iotfleet.pki import PkiStore
from iotfleet.project import PROJECT_DIR

RegionName = Literal["firmware", "filesystem"]


@dataclass(frozen=True)
class Region:
    """Bytes that belong at ``offset`` of the board's flash."""

    name: RegionName
    offset: int
    data: bytes = field(repr=False)
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # noqa: S324 - the bootloader's digest

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class FlashJob:
    """One board to flash: where it is, which device it becomes, what goes where."""

    station: str
    port: str
    device_id: str
    regions: tuple[Region, ...]
    layout: str = "4M2M"
    flash_size: int = 4 * 1024 * 1024  # the smallest chip the layout fits
    expected_macs: tuple[tuple[str, str], ...] = ()  # (inventory key, MAC) that must match
    cert_serial: str | None = None
    flash_file: Path | None = None  # an emulated board's flash file (lab), informative

    def region(self, name: RegionName) -> Region | None:
        return next((r for r in self.regions if r.name == name), None)

    @property
    def firmware_sha256(self) -> str | None:
        region = self.region("firmware")
        return region.sha256 if region else None

    @property
    def image_sha256(self) -> str | None:
        region = self.region("filesystem")
        return region.sha256 if region else None


@dataclass(frozen=True)
class BoardResult:
    """What happened to one board (also recorded in the registry)."""

    station: str
    port: str
    device_id: str
    status: Result | Literal["outdated"]  # flashed | unchanged | failed | refused (| outdated)
    message: str = ""
    mac: str | None = None
    kind: FailureKind | None = None  # why it failed, when it did
    regions_written: tuple[str, ...] = ()
    bytes_written: int = 0  # bytes of flash written
    bytes_sent: int = 0  # bytes sent over the port (compressed)
    duration: float = 0.0
    log_path: Path | None = None
    # Planning passes (dry runs) only: the board matches, but its registry entry says otherwise.
    registry_stale: bool = False

    @property
    def ok(self) -> bool:
        """The board holds the device's current firmware and secrets."""
        return self.status in ("flashed", "unchanged")

    @property
    def changed(self) -> bool:
        """Something was written (or, in a dry run, would be)."""
        return self.status in ("flashed", "outdated")


def station_jobs(
    ctx: FleetContext,
    station: FlashStation | str,
    *,
    base_dir: Path | None = None,
    pki: PkiStore | None = None,
) -> tuple[list[FlashJob], list[BoardResult]]:
    """Jobs for every board of ``station``, and failed results for boards with bad inputs.

    Args:
        ctx: the fleet and its state.
        station: a flash station (or its inventory name).
        base_dir: where relative firmware paths start (default: the current directory, the
            checkout pyinfra runs in).
        pki: a PKI store to reuse (default: ``ctx.pki``).
    """
    if isinstance(station, str):
        station = next(s for s in ctx.fleet.stations if s.name == station)
    base = base_dir or Path.cwd()
    store = pki or ctx.pki
    firmware_cache: dict[Path, bytes] = {}
    jobs: list[FlashJob] = []
    failures: list[BoardResult] = []
    for index, board in enumerate(station.boards):
        try:
            jobs.append(_job(ctx, station, index, board, base, store, firmware_cache))
        except DeviceImageError as exc:
            failures.append(
                BoardResult(
                    station=station.name,
                    port=board.port,
                    device_id=board.device,
                    status="failed",
                    message=f"board {board.device} on {board.port}: {exc}",
                    kind="input",
                )
            )
    return jobs, failures


def firmware_file(base: Path, path: Path) -> Path:
    """``path`` from ``base``; the default stand-in from iotfleet's own files when ``base``
    has none (a user's project, with iotfleet installed from the wheel)."""
    here = base / path
    if path == DEFAULT_PATH and not here.exists():
        return PROJECT_DIR / DEFAULT_PATH
    return here


def _job(
    ctx: FleetContext,
    station: FlashStation,
    index: int,
    board: Board,
    base: Path,
    store: PkiStore,
    firmware_cache: dict[Path, bytes],
) -> FlashJob:
    layout = board_layout(station, board)
    key = f"espgw_boards[{index}].firmware" if board.firmware else "espgw_firmware"
    path = board.firmware or station.gateway.firmware
    firmware = _firmware(firmware_file(base, path), firmware_cache, f"host {station.name}", key)
    if is_stand_in(firmware) and is_real_device(board):
        raise DeviceImageError(
            f"host {station.name}",
            key,
            f"{path} is iotfleet's stand-in image, which boots into a loop: it is flashed only "
            f"to emulated boards, and {board.port} is not one (a serial device, or a network "
            "serial port off this machine's loopback). Build the reference "
            "firmware (files/firmware/iotfleet-gateway/: `pio run`, see docs/gateways.md) or "
            "your own, and set espgw_firmware to it",
        )
    wifi = station.gateway.wifi_passphrase
    if wifi is not None and wifi.kind == "generated" and is_real_device(board):
        raise DeviceImageError(
            f"host {station.name}",
            "espgw_wifi_passphrase",
            f'"generated" makes up a passphrase no access point knows, and {board.port} is a '
            "real board that must join espgw_wifi_ssid: give the network's passphrase as "
            "env:NAME or file:PATH (generated is for the lab's emulated boards)",
        )
    if len(firmware) > layout.fs_offset:
        raise DeviceImageError(
            f"host {station.name}",
            key,
            f"{path} is {len(firmware)} bytes and would overwrite the {layout.name} filesystem "
            f"at 0x{layout.fs_offset:x}",
        )
    image = build_device_image(ctx, board.device, station=station, layout=layout.name, pki=store)
    expected: list[tuple[str, str]] = []
    if board.mac:
        expected.append((f"espgw_boards[{index}].mac", board.mac))
    device = ctx.fleet.device(board.device)
    if device.mac:
        expected.append((f"fleet_devices {device.id}: mac", device.mac))
    return FlashJob(
        station=station.name,
        port=board.port,
        device_id=board.device,
        regions=(
            Region("firmware", 0, firmware),
            Region("filesystem", layout.fs_offset, image.data, image.sha256),
        ),
        layout=layout.name,
        flash_size=layout.flash_size,
        expected_macs=tuple(expected),
        cert_serial=image.cert_serial,
        flash_file=board.flash_file,
    )


def is_real_device(board: Board) -> bool:
    """A board that may be real hardware: anything but an emulated board. Emulated are the
    boards whose flash file the lab names (attached ones included) and network serial ports on
    this machine's loopback (``socket://127.0.0.1:PORT``, ``[::1]``, ``localhost``), where the
    emulator listens. A ``socket://`` or ``rfc2217://`` port on any other host is a real board
    behind ser2net or an RFC 2217 server."""
    if board.flash_file is not None:
        return False
    if "://" not in board.port:
        return True
    return not _on_loopback(urlsplit(board.port).hostname)


def _on_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost; names are not resolved (no lookup decides a flash)."""
    if host is None:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _firmware(path: Path, cache: dict[Path, bytes], where: str, key: str) -> bytes:
    if path not in cache:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DeviceImageError(where, key, f"cannot read {path}: {exc.strerror}") from None
        if not data or data[0] != IMAGE_MAGIC:
            raise DeviceImageError(
                where, key, f"{path} is not an ESP8266 application image (no 0xE9 magic byte)"
            )
        cache[path] = data
    return cache[path]
