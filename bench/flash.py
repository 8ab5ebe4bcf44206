"""Benchmark: flashing ESP8266 gateways with iotfleet vs bare esptool, on emulated boards.

    .venv/bin/python bench/flash.py [--boards 8] [--firmware-kb 128] [--repeat 2]
                                    [--mode uart|loopback|both]

Boards are ``python -m iotfleet.emulator`` processes (as in the lab) on loopback ports. Two link
models:
- uart: the emulator carries bytes no faster than a UART at the current baud rate (115200 for
  the ROM, 460800 after the stub switches), like a USB-serial adapter: what a flash station sees.
- loopback: bytes go as fast as the machine moves them; every cost is CPU (2 cores here).

Prints, side by side, per mode: one board vs N boards in parallel (target <= 1.3x), iotfleet vs
a bare ``esptool write-flash`` of the same images (target <= 10% slower), and the unchanged
re-flash per board (target <= 2 s). Also one board on a flash station's device path, through the
station serial relay (RFC 2217 over the relay's stdin/stdout, a pty bridged to the board): the
relay runs under a local shell here, standing in for the SSH channel the rollout uses. Figures
and ratios only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotfleet.device import reference_firmware
from iotfleet.flash import (
    FlashJob,
    FlashOptions,
    FlashRegistry,
    flash_boards,
    flash_station,
    station_jobs,
)
from iotfleet.flash.station_link import CommandStationLink
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model import RawHost, build_fleet

BAUD = 460800
PASSPHRASE = "bench-passphrase-not-secret"  # noqa: S105 (throwaway CA)
WIFI = "bench-wifi-passphrase"


@dataclass
class Board:
    process: subprocess.Popen[str]
    url: str
    mac: str
    flash: Path


def start_boards(workdir: Path, count: int, uart: bool, tag: str) -> list[Board]:
    """Fresh (erased) emulated boards, one process each."""
    boards = []
    for i in range(count):
        flash = workdir / f"{tag}-{i}.flash"
        flash.unlink(missing_ok=True)
        mac = f"18:fe:34:be:00:{i:02x}"
        argv = [
            sys.executable,
            "-m",
            "iotfleet.emulator",
            "--listen",
            "127.0.0.1:0",
            "--flash",
            str(flash),
            "--mac",
            mac,
        ]
        if uart:
            argv.append("--serial-speed")
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert process.stderr is not None
        line = process.stderr.readline()
        if "listening on " not in line:
            raise SystemExit(f"emulator did not start: {line}")
        boards.append(Board(process, line.rsplit(" ", 1)[-1].strip(), mac, flash))
    return boards


def stop_boards(boards: list[Board]) -> None:
    for board in boards:
        board.process.terminate()
    for board in boards:
        board.process.wait(timeout=10)


def fleet_context(
    boards: list[Board], firmware: Path, station: str = "@local", ports: list[str] | None = None
) -> FleetContext:
    ports = ports or [b.url for b in boards]
    fleet = build_fleet(
        [
            RawHost(
                "localhost",
                ("brokers",),
                {
                    "fleet_name": "bench",
                    "ssh_hostname": "127.0.0.1",
                    "fleet_devices": [{"id": f"gw-{i:02d}"} for i in range(len(boards))],
                },
            ),
            RawHost(
                station,
                ("flash_stations",),
                {
                    "espgw_wifi_ssid": "bench",
                    "espgw_wifi_passphrase": "env:BENCH_WIFI",
                    "espgw_firmware": str(firmware),
                    "espgw_baud": BAUD,
                    "espgw_boards": [
                        {"port": port, "device": f"gw-{i:02d}"} for i, port in enumerate(ports)
                    ],
                },
            ),
        ]
    )
    return FleetContext.for_fleet(fleet)


def iotfleet_flash(jobs: list[FlashJob], registry: FlashRegistry) -> tuple[float, list[float]]:
    start = time.perf_counter()
    results = flash_boards(
        jobs, registry, parallel=len(jobs), progress=False, options=FlashOptions(baud=BAUD)
    )
    elapsed = time.perf_counter() - start
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"flash failed: {bad[0].message}")
    return elapsed, [r.duration for r in results]


def esptool_flash(boards: list[Board], images: list[tuple[Path, Path, int]]) -> float:
    """Bare `esptool write-flash` of the same two images, one process per board, in parallel."""

    def one(index: int) -> None:
        firmware, fs_image, offset = images[index]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "esptool",
                "--port",
                boards[index].url,
                "--baud",
                str(BAUD),
                "write-flash",
                "0x0",
                str(firmware),
                hex(offset),
                str(fs_image),
            ],
            check=True,
            capture_output=True,
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(len(boards)) as pool:
        list(pool.map(one, range(len(boards))))
    return time.perf_counter() - start


def relay_flash(workdir: Path, uart: bool, firmware: Path) -> tuple[float, float]:
    """One board on a station's device path: first flash and unchanged re-flash, in seconds."""
    from iotfleet.lab import serial_bridge

    [board] = start_boards(workdir, 1, uart, "relay")
    device = workdir / "ttyUSB-bench"
    device.unlink(missing_ok=True)
    bridge = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-c",
            Path(serial_bridge.__file__).read_text(),
            board.url.rsplit(":", 1)[1],
            str(device),
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # The station's python3 is this venv's (it has pyserial, as python3-serial gives a station).
    bin_dir = workdir / "station-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    link = CommandStationLink(
        "bench-station", ["env", f"PATH={bin_dir}:{os.environ['PATH']}", "sh", "-c"]
    )
    try:
        assert bridge.stdout is not None
        bridge.stdout.readline()  # the link exists
        ctx = fleet_context([board], firmware, "bench-station", [str(device)])
        times = []
        for _ in range(2):
            start = time.perf_counter()
            [result] = flash_station(
                ctx, "bench-station", progress=False, link=link, options=FlashOptions(baud=BAUD)
            )
            times.append(time.perf_counter() - start)
            if not result.ok:
                raise SystemExit(f"relay flash failed: {result.message}")
        return times[0], times[1]
    finally:
        bridge.terminate()
        bridge.wait(timeout=10)
        stop_boards([board])


def measure(repeat: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeat))


def bench_mode(workdir: Path, count: int, uart: bool, repeat: int, firmware: Path) -> None:
    registry = FlashRegistry(workdir / "registry.sqlite")

    def setup(n: int, tag: str) -> tuple[list[Board], list[FlashJob]]:
        boards = start_boards(workdir, n, uart, tag)
        jobs, failures = station_jobs(fleet_context(boards, firmware), "@local")
        if failures:
            raise SystemExit(failures[0].message)
        return boards, jobs

    def iotfleet_run(n: int) -> float:
        boards, jobs = setup(n, "io")
        try:
            return iotfleet_flash(jobs, registry)[0]
        finally:
            stop_boards(boards)

    def esptool_run(n: int) -> float:
        boards, jobs = setup(n, "et")
        images = []
        for i, job in enumerate(jobs):
            fw, fs = job.region("firmware"), job.region("filesystem")
            assert fw is not None and fs is not None
            fw_path, fs_path = workdir / f"fw-{i}.bin", workdir / f"fs-{i}.bin"
            fw_path.write_bytes(fw.data)
            fs_path.write_bytes(fs.data)
            images.append((fw_path, fs_path, fs.offset))
        try:
            return esptool_flash(boards, images)
        finally:
            stop_boards(boards)

    one = measure(repeat, lambda: iotfleet_run(1))
    many = measure(repeat, lambda: iotfleet_run(count))
    bare_one = measure(repeat, lambda: esptool_run(1))
    bare_many = measure(repeat, lambda: esptool_run(count))

    boards, jobs = setup(count, "re")
    try:
        iotfleet_flash(jobs, registry)  # first flash, then the unchanged one is measured
        again_total, again_each = iotfleet_flash(jobs, registry)
    finally:
        stop_boards(boards)
    registry.close()
    relay_first, relay_again = relay_flash(workdir, uart, firmware)

    link = "UART model (115200 ROM, 460800 stub)" if uart else "loopback, no link model (CPU)"
    print(
        f"\n== {link}; firmware {firmware.stat().st_size // 1024} KB + 2 MB filesystem "
        f"image per board, median of {repeat}"
    )
    print(f"{'':44}{'seconds':>10}{'ratio':>10}{'target':>10}")
    print(f"{'iotfleet, 1 board':44}{one:10.2f}{'1.00x':>10}")
    print(
        f"{f'iotfleet, {count} boards in parallel':44}{many:10.2f}{many / one:9.2f}x{'<= 1.3x':>10}"
    )
    print(f"{'bare esptool write-flash, 1 board':44}{bare_one:10.2f}{'1.00x':>10}")
    print(
        f"{'iotfleet vs bare esptool, 1 board':44}{one:10.2f}{one / bare_one:9.2f}x{'<= 1.10x':>10}"
    )
    print(f"{f'bare esptool, {count} boards (processes)':44}{bare_many:10.2f}{'1.00x':>10}")
    print(
        f"{f'iotfleet vs bare esptool, {count} boards':44}{many:10.2f}{many / bare_many:9.2f}x"
        f"{'<= 1.10x':>10}"
    )
    print(f"{f'unchanged re-flash, {count} boards':44}{again_total:10.2f}")
    print(f"{'unchanged re-flash per board (max)':44}{max(again_each):10.2f}{'':>10}{'<= 2 s':>10}")
    print(
        f"{'station relay (device path), 1 board':44}{relay_first:10.2f}"
        f"{relay_first / one:9.2f}x{'vs @local':>10}"
    )
    print(f"{'station relay, unchanged re-flash':44}{relay_again:10.2f}{'':>10}{'<= 2 s':>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument(
        "--firmware-kb",
        type=int,
        default=128,
        help="firmware size (code-like filler after a valid image, zlib -> ~75%%)",
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mode", choices=["uart", "loopback", "both"], default="both")
    args = parser.parse_args()

    # A throwaway fleet (its own PKI and secrets), removed at the end.
    workdir = Path(tempfile.mkdtemp(prefix="iotfleet-bench-flash-"))
    os.environ.update(
        IOTFLEET_HOME=str(workdir / "home"), IOTFLEET_PKI_PASSPHRASE=PASSPHRASE, BENCH_WIFI=WIFI
    )
    try:
        firmware = workdir / "firmware.bin"
        firmware.write_bytes(reference_firmware(extra_bytes=args.firmware_kb * 1024))
        boards = start_boards(workdir, args.boards, False, "pki")
        try:
            ctx = fleet_context(boards, firmware)
            reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
        finally:
            stop_boards(boards)
        print(f"iotfleet flash bench: {args.boards} boards, {os.cpu_count()} CPU(s)")
        modes = ["uart", "loopback"] if args.mode == "both" else [args.mode]
        for mode in modes:
            bench_mode(workdir, args.boards, mode == "uart", args.repeat, firmware)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
