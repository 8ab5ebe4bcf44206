"""The real, unmodified esptool (as a process) against iotfleet's ESP8266 emulator: stub path
with compression and MD5 verification, the ROM (``--no-stub``) path, read-mac, flash-id,
read-flash, erase; the lab's ``python -m iotfleet.emulator`` contract; the written images
mounted with the board's geometry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from esptool.cmds import detect_chip, read_flash, run_stub

from iotfleet.device import Bundle, build_device_image, read_littlefs_image, reference_firmware
from iotfleet.emulator import BoardServer
from iotfleet.emulator.chip import checksum, rom_erase_bytes
from iotfleet.emulator.slip import SlipDecoder, encode_frame
from iotfleet.gateway import read_flash_files
from tests.support.local_broker import free_port
from tests.unit.gateway_helpers import GatewayFleet, esptool_env, gateway_environment

MAC = "18:fe:34:a1:b2:c3"


def esptool(port: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esptool", "--port", port, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=esptool_env(),
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def board(tmp_path: Path) -> Iterator[BoardServer]:
    with BoardServer(tmp_path / "board.flash", MAC) as server:
        yield server


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFleet]:
    home = tmp_path_factory.mktemp("home")
    with gateway_environment(home):
        yield GatewayFleet(home, [{"id": "gw-1"}])


def test_read_mac_and_chip_through_the_rom(board: BoardServer) -> None:
    out = ok(esptool(board.url, "--no-stub", "read-mac"))
    assert "Detecting chip type... ESP8266" in out
    assert "Chip type:          ESP8266EX" in out
    assert "Crystal frequency:  26MHz" in out
    assert f"MAC:                {MAC}" in out


def test_mac_outside_espressif_ouis(tmp_path: Path) -> None:
    with BoardServer(tmp_path / "b.flash", "02:00:00:12:34:56") as other:
        assert "MAC:                02:00:00:12:34:56" in ok(esptool(other.url, "read-mac"))


def test_stub_write_compressed_verifies_by_md5_and_holds_the_contract(
    board: BoardServer, gateways: GatewayFleet, tmp_path: Path
) -> None:
    ctx = gateways.context([{"port": board.url, "device": "gw-1"}])
    image = build_device_image(ctx, "gw-1")
    (tmp_path / "fs.bin").write_bytes(image.data)
    (tmp_path / "fw.bin").write_bytes(reference_firmware())
    out = ok(
        esptool(
            board.url,
            "--baud",
            "460800",
            "write-flash",
            "0x0",
            str(tmp_path / "fw.bin"),
            "0x200000",
            str(tmp_path / "fs.bin"),
        )
    )
    assert "Stub flasher running." in out
    assert "Changing baud rate to 460800" in out
    assert f"Wrote {len(image.data)} bytes (" in out and "compressed) at 0x00200000" in out
    assert out.count("Hash of data verified.") == 2
    assert board.counters.write_sessions == 2 and board.counters.md5_requests >= 2
    # Mount what the board holds, with the board's geometry, and check every file.
    board.flash.flush()
    files = read_flash_files(board.flash.path, "4M2M")
    assert files == read_littlefs_image(image.data, image.layout)
    bundle = Bundle.from_files(files)
    assert bundle.config.device_id == "gw-1"
    assert bundle.certificate_pem == ctx.pki.certificate_pem("gw-1")
    assert bundle.private_key_pem == ctx.pki.private_key_pem("gw-1")
    assert bundle.ca_chain_pem == ctx.pki.ca_chain_pem()
    # esptool's own verify-flash agrees.
    assert "Verification successful" in ok(
        esptool(board.url, "verify-flash", "0x200000", str(tmp_path / "fs.bin"))
    )


def test_rom_only_write_uncompressed(board: BoardServer, tmp_path: Path) -> None:
    data = os.urandom(70_000)  # not a multiple of the ROM's 1 KB blocks, incompressible
    (tmp_path / "data.bin").write_bytes(data)
    out = ok(esptool(board.url, "--no-stub", "write-flash", "0x10000", str(tmp_path / "data.bin")))
    assert "Stub flasher running." not in out
    assert "Erasing flash..." in out and f"Wrote {len(data)} bytes at 0x00010000" in out
    board.flash.flush()
    assert board.flash.read(0x10000, len(data)) == data
    assert board.counters.data_blocks == 69  # 70000 bytes in 1 KB blocks
    assert "Verification successful" in ok(
        esptool(board.url, "verify-flash", "0x10000", str(tmp_path / "data.bin"))
    )


def test_flash_id_read_flash_and_erase(board: BoardServer, tmp_path: Path) -> None:
    out = ok(esptool(board.url, "flash-id"))
    assert "Manufacturer: ef" in out and "Detected flash size: 4MB" in out
    data = os.urandom(8192)
    board.flash.program(0x3000, data)
    ok(esptool(board.url, "read-flash", "0x3000", "8192", str(tmp_path / "back.bin")))
    assert (tmp_path / "back.bin").read_bytes() == data
    ok(esptool(board.url, "erase-region", "0x3000", "0x1000"))
    assert board.flash.read(0x3000, 0x1000) == b"\xff" * 0x1000
    assert board.flash.read(0x4000, 0x1000) == data[0x1000:]
    ok(esptool(board.url, "erase-flash"))
    assert board.flash.read(0x4000, 0x1000) == b"\xff" * 0x1000
    refused = esptool(board.url, "--no-stub", "erase-flash")
    assert refused.returncode != 0 and "ESP8266 ROM does not support" in refused.stderr


def test_esptool_python_api_read_back(board: BoardServer) -> None:
    data = os.urandom(4096 * 3)
    board.flash.program(0x100000, data)
    with detect_chip(board.url, connect_attempts=2) as rom:
        esp = run_stub(rom)
        assert esp.read_mac() == tuple(bytes.fromhex(MAC.replace(":", "")))
        assert read_flash(esp, 0x100000, len(data), None) == data
        esp._port.close()


def test_lab_contract_process_serves_until_sigterm(tmp_path: Path) -> None:
    """`python -m iotfleet.emulator --listen 127.0.0.1:PORT --flash FILE --mac MAC` (the
    lab's argv), several clients one after the other, flash kept in FILE, clean SIGTERM."""
    port = free_port()
    flash, stats = tmp_path / "gw.flash", tmp_path / "stats.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotfleet.emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--flash",
            str(flash),
            "--mac",
            "18:FE:34:00:00:01",
            "--stats",
            str(stats),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"socket://127.0.0.1:{port}"
        _wait_listening(process)
        assert flash.stat().st_size == 4 * 1024 * 1024 and flash.stat().st_mode & 0o777 == 0o600
        (tmp_path / "fw.bin").write_bytes(reference_firmware())
        ok(esptool(url, "write-flash", "0x0", str(tmp_path / "fw.bin")))
        assert "18:fe:34:00:00:01" in ok(esptool(url, "read-mac"))
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert flash.read_bytes()[: len(reference_firmware())] == reference_firmware()
    counters = json.loads(stats.read_text())
    assert counters["sessions"] == 2 and counters["write_sessions"] == 1


def test_fault_flags_on_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotfleet.emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--flash",
            str(tmp_path / "f"),
            "--mac",
            MAC,
            "--report-mac",
            "18:fe:34:00:00:99",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_listening(process)
        assert "18:fe:34:00:00:99" in ok(esptool(f"socket://127.0.0.1:{port}", "read-mac"))
    finally:
        process.terminate()
        process.communicate(timeout=10)
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotfleet.emulator",
            "--listen",
            "0.0.0.0:0",
            "--flash",
            str(tmp_path / "g"),
            "--mac",
            MAC,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0 and "only listen on loopback" in refused.stderr


def test_slip_and_checksum_helpers() -> None:
    payload = bytes([0xC0, 0xDB, 0x01, 0xDB, 0xDC, 0xC0])
    decoder = SlipDecoder()
    wire = b"noise" + encode_frame(payload) + encode_frame(b"x")
    assert decoder.feed(wire[:7]) == []
    assert decoder.feed(wire[7:]) == [payload, b"x"]
    assert checksum(b"") == 0xEF and checksum(b"\x01\x02") == 0xEF ^ 3
    # The ROM's erase bug, as esptool compensates it: asking for esptool's size erases enough.
    assert rom_erase_bytes(0, 3 * 4096) == 6 * 4096
    assert rom_erase_bytes(0x200000, 0x1FA000 - 16 * 4096) >= 0x1FA000


def _wait_listening(process: subprocess.Popen[str]) -> None:
    """The emulator says "listening on ..." once its port accepts clients (a probe connection
    would count as a session)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening on socket://127.0.0.1:" in line, line + (process.stdout.read() or "")
