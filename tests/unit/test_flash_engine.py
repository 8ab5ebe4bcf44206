"""The flashing engine against emulated boards: what lands in flash, skip-unchanged proven by
the board's own write counters, MAC binding, the registry, faults and retries, parallel boards
with progress and a log per board."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from iotfleet.device import Bundle
from iotfleet.emulator import BoardServer
from iotfleet.flash import (
    BoardResult,
    FlashRegistry,
    flash_boards,
    flash_station,
    station_jobs,
)
from iotfleet.flash.progress import flash_progress
from iotfleet.gateway import read_flash_files
from tests.support.waiting import returns_within
from tests.unit.gateway_helpers import (
    WIFI_ENV,
    WIFI_PASSPHRASE,
    GatewayFleet,
    board,
    emulated,
    gateway_environment,
    options,
)

DEVICES = [{"id": f"gw-{i}"} for i in range(1, 7)] + [
    {"id": "gw-pinned", "mac": "18:fe:34:00:00:77"}
]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFleet]:
    home = tmp_path_factory.mktemp("home")
    with gateway_environment(home):
        yield GatewayFleet(home, DEVICES)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[FlashRegistry]:
    store = FlashRegistry(tmp_path / "state" / "flash-registry.sqlite")
    yield store
    store.close()


def flash(
    gateways: GatewayFleet,
    registry: FlashRegistry,
    tmp: Path,
    boards: list[dict[str, Any]],
    *,
    reenroll: bool = False,
    parallel: int = 8,
    **espgw: Any,
) -> list[BoardResult]:
    ctx = gateways.context(boards, **espgw)
    jobs, failures = station_jobs(ctx, "@local")
    assert not failures, failures
    return flash_boards(
        jobs, registry, parallel=parallel, reenroll=reenroll, progress=False, options=options(tmp)
    )


def test_the_default_stand_in_comes_with_iotfleet_outside_a_checkout(tmp_path: Path) -> None:
    from iotfleet.device.firmware_stub import DEFAULT_PATH, is_stand_in
    from iotfleet.flash.jobs import firmware_file

    packaged = firmware_file(tmp_path, DEFAULT_PATH)
    assert packaged.is_file() and is_stand_in(packaged.read_bytes())
    # A user's own file of that name, or any other path, is theirs.
    (tmp_path / DEFAULT_PATH).parent.mkdir(parents=True)
    (tmp_path / DEFAULT_PATH).write_bytes(b"mine")
    assert firmware_file(tmp_path, DEFAULT_PATH) == tmp_path / DEFAULT_PATH
    assert firmware_file(tmp_path, Path("fw.bin")) == tmp_path / "fw.bin"


def test_first_flash_writes_everything_second_writes_nothing(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:01") as gw:
        boards = [board(gw, "gw-1")]
        [first] = flash(gateways, registry, tmp_path, boards)
        assert first.status == "flashed", first.message
        assert first.regions_written == ("firmware", "filesystem")
        assert first.mac == "18:fe:34:00:00:01"
        assert gw.counters.write_sessions == 2
        programmed = gw.counters.bytes_programmed

        # The board holds the device's files, read back with the board's geometry.
        gw.flash.flush()
        bundle = Bundle.from_files(read_flash_files(gw.flash.path, "4M2M"))
        ctx = gateways.context(boards)
        assert bundle.config.device_id == "gw-1"
        assert bundle.certificate_pem == ctx.pki.certificate_pem("gw-1")
        assert bundle.wifi_passphrase.get_secret_value() == WIFI_PASSPHRASE

        [second] = flash(gateways, registry, tmp_path, boards)
        assert second.status == "unchanged" and not second.changed and second.ok
        assert second.bytes_written == 0
        assert gw.counters.bytes_programmed == programmed  # not one byte written
        assert gw.counters.write_sessions == 2 and gw.counters.bytes_erased == first_erased(gw)

    history = registry.history("gw-1")
    assert [r.result for r in history] == ["flashed", "unchanged"]
    record = history[0]
    assert record.provisioned and record.mac == "18:fe:34:00:00:01"
    assert record.station == "@local" and record.port == gw.url and record.layout == "4M2M"
    assert record.firmware_sha256 and record.image_sha256 and record.cert_serial
    cert = gateways.context(boards).pki.record("gw-1")
    assert cert is not None and record.cert_serial == cert.serial_hex
    enrollment = registry.enrollment("gw-1")
    assert enrollment is not None and enrollment.mac == "18:fe:34:00:00:01"
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600


def first_erased(gw: BoardServer) -> int:
    return gw.counters.bytes_erased  # erasing happens only while writing


def test_changed_secrets_rewrite_only_the_filesystem(
    gateways: GatewayFleet,
    registry: FlashRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:02") as gw:
        boards = [board(gw, "gw-2")]
        assert flash(gateways, registry, tmp_path, boards)[0].status == "flashed"
        monkeypatch.setenv(WIFI_ENV, "a new wifi passphrase")
        [result] = flash(gateways, registry, tmp_path, boards)
        assert result.status == "flashed" and result.regions_written == ("filesystem",)
        gw.flash.flush()
        bundle = Bundle.from_files(read_flash_files(gw.flash.path, "4M2M"))
        assert bundle.wifi_passphrase.get_secret_value() == "a new wifi passphrase"


def test_other_layout_puts_the_filesystem_elsewhere(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:03") as gw:
        [result] = flash(gateways, registry, tmp_path, [board(gw, "gw-3", layout="4M1M")])
        assert result.status == "flashed", result.message
        gw.flash.flush()
        files = read_flash_files(gw.flash.path, "4M1M")
        assert Bundle.from_files(files).config.device_id == "gw-3"
        assert registry.history("gw-3")[-1].layout == "4M1M"


def test_mac_binding_enroll_refuse_reenroll(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with (
        emulated(tmp_path / "a.flash", "18:fe:34:00:00:0a") as first,
        emulated(tmp_path / "b.flash", "18:fe:34:00:00:0b") as replacement,
    ):
        assert flash(gateways, registry, tmp_path, [board(first, "gw-4")])[0].ok

        [refused] = flash(gateways, registry, tmp_path, [board(replacement, "gw-4")])
        assert refused.status == "refused" and refused.kind == "refused"
        assert refused.message.startswith(
            f"board gw-4 on {replacement.url}: device gw-4 is "
            "enrolled with MAC 18:fe:34:00:00:0a, this board is "
            "18:fe:34:00:00:0b"
        )
        assert "espgw_reenroll" in refused.message
        assert replacement.counters.bytes_programmed == 0  # refused before any write
        assert not registry.is_provisioned("gw-4")

        [moved] = flash(gateways, registry, tmp_path, [board(replacement, "gw-4")], reenroll=True)
        assert moved.status == "flashed", moved.message
        enrollment = registry.enrollment("gw-4")
        assert enrollment is not None and enrollment.mac == "18:fe:34:00:00:0b"
        assert registry.is_provisioned("gw-4")

        # The old board is now free; making it another device needs re-enrollment too once
        # its MAC is enrolled elsewhere: the replacement board cannot silently become gw-5.
        [taken] = flash(gateways, registry, tmp_path, [board(replacement, "gw-5")])
        assert taken.status == "refused" and "enrolled as device gw-4" in taken.message


def test_inventory_mac_must_match_even_with_reenroll(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    # A board that answers a MAC other than the one the inventory pins (wrong board on port).
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:77", report_mac="18:fe:34:00:00:66") as gw:
        [result] = flash(gateways, registry, tmp_path, [board(gw, "gw-pinned")], reenroll=True)
        assert result.status == "refused"
        assert (
            "MAC 18:fe:34:00:00:66 but fleet_devices gw-pinned: mac is 18:fe:34:00:00:77"
            in result.message
        )
        [result] = flash(
            gateways,
            registry,
            tmp_path,
            [board(gw, "gw-6", mac="18:FE:34:00:00:55")],
            reenroll=True,
        )
        assert "but espgw_boards[0].mac is 18:fe:34:00:00:55" in result.message
        assert gw.counters.bytes_programmed == 0
    assert [r.result for r in registry.history("gw-pinned")] == ["refused"]
    assert not registry.is_provisioned("gw-pinned")


def test_board_vanishing_mid_write_then_retry(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:05", drop_after_bytes=1_000_000) as gw:
        boards = [board(gw, "gw-5")]
        [lost] = flash(gateways, registry, tmp_path, boards)
        assert lost.status == "failed" and lost.kind == "disconnected"
        assert lost.message.startswith(
            f"board gw-5 on {gw.url}: lost the board on {gw.url} during 'write at 0x200000'"
        )
        assert gw.counters.drops == 1
        last = registry.latest("gw-5")
        assert last is not None and last.result == "failed" and not last.provisioned
        assert registry.enrollment("gw-5") is None  # nothing enrolled by a failed flash

        [retry] = flash(gateways, registry, tmp_path, boards)
        assert retry.status == "flashed", retry.message
        assert registry.is_provisioned("gw-5")
        gw.flash.flush()
        assert Bundle.from_files(read_flash_files(gw.flash.path, "4M2M")).config.device_id == "gw-5"


def test_dropped_after_some_blocks(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:06", drop_after_blocks=1) as gw:
        [lost] = flash(gateways, registry, tmp_path, [board(gw, "gw-6")])
        assert lost.kind == "disconnected" and gw.counters.data_blocks == 1
        assert flash(gateways, registry, tmp_path, [board(gw, "gw-6")])[0].status == "flashed"


def test_no_answer_is_a_timeout_naming_the_port(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:01", silent=True) as gw:
        ctx = gateways.context([board(gw, "gw-1")])
        jobs, _ = station_jobs(ctx, "@local")
        [result] = returns_within(
            lambda: flash_boards(
                jobs, registry, progress=False, options=options(tmp_path, connect_attempts=1)
            )
        )
    assert result.status == "failed" and result.kind == "no-answer"
    assert f"no ESP8266 bootloader answers on {gw.url} (timed out after" in result.message
    assert result.message.startswith("board gw-1 on ")


def test_a_stub_that_never_starts_is_a_timeout_not_a_hang(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:01", stub_silent=True) as gw:
        ctx = gateways.context([board(gw, "gw-1")])
        jobs, _ = station_jobs(ctx, "@local")
        [result] = returns_within(
            lambda: flash_boards(jobs, registry, progress=False, options=options(tmp_path))
        )
    assert result.status == "failed", result
    assert "could not start the flasher stub" in result.message, result.message
    assert registry.history() == []  # its flash was never read: nothing to record


def test_missing_and_busy_ports(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    from tests.support.local_broker import free_port

    missing = f"socket://127.0.0.1:{free_port()}"
    built = tmp_path / "built-firmware.bin"  # a real board gets a real build, not the stand-in
    built.write_bytes(b"\xe9" + bytes(255))
    ctx = gateways.context(
        [
            {"port": missing, "device": "gw-1"},
            {"port": "/dev/ttyUSB-iotfleet-none", "device": "gw-2", "firmware": str(built)},
        ]
    )
    jobs, _ = station_jobs(ctx, "@local")
    results = flash_boards(jobs, registry, progress=False, options=options(tmp_path))
    assert [r.kind for r in results] == ["port", "port"]
    assert f"cannot open port {missing}" in results[0].message
    assert "/dev/ttyUSB-iotfleet-none" in results[1].message
    assert registry.history() == []  # no board was reached

    # Busy: a second flash of the same port while the first holds it.
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:01") as gw:
        from iotfleet.flash.engine import _port_lock

        jobs, _ = station_jobs(gateways.context([board(gw, "gw-1")]), "@local")
        with _port_lock(tmp_path / "locks", "@local", gw.url):
            [busy] = flash_boards(jobs, registry, progress=False, options=options(tmp_path))
        assert busy.kind == "busy" and f"port {gw.url} is busy" in busy.message
        # The emulator itself turns away a second client while one is connected.
        import socket

        with socket.create_connection(("127.0.0.1", gw.port)):
            time.sleep(0.1)
            [taken] = flash_boards(
                jobs, registry, progress=False, options=options(tmp_path, connect_attempts=1)
            )
        assert taken.status == "failed" and taken.kind in ("busy", "no-answer")
        assert (
            flash_boards(jobs, registry, progress=False, options=options(tmp_path))[0].status
            == "flashed"
        )


def test_bad_inputs_become_failed_boards_and_others_still_flash(
    gateways: GatewayFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:03") as gw:
        boards = [
            {"port": "socket://127.0.0.1:1", "device": "gw-1", "layout": "4M7M"},
            {"port": "socket://127.0.0.1:2", "device": "gw-2", "firmware": str(tmp_path / "x")},
            board(gw, "gw-3"),
        ]
        ctx = gateways.context(boards)
        results = flash_station(ctx, "@local", progress=False, options=options(tmp_path))
    assert [r.status for r in results] == ["failed", "failed", "flashed"]
    assert results[0].message.startswith(
        "board gw-1 on socket://127.0.0.1:1: host @local: espgw_boards[0].layout: "
        "unknown flash layout '4M7M'"
    )
    assert "espgw_boards[1].firmware: cannot read" in results[1].message
    registry = FlashRegistry(ctx.registry_path)
    try:
        assert registry.latest("gw-1") is None and registry.latest("gw-2") is None
        assert registry.is_provisioned("gw-3")
    finally:
        registry.close()

    monkeypatch.setenv(WIFI_ENV, "short")
    [bad] = flash_station(
        gateways.context([board(gw, "gw-3")]), "@local", progress=False, options=options(tmp_path)
    )
    assert (
        bad.kind == "input"
        and "espgw_wifi_passphrase: a Wi-Fi passphrase has 8..63" in bad.message
        and "short" not in bad.message.split("has")[-1]
    )


def test_parallel_boards_progress_and_a_log_per_board(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    servers = [emulated(tmp_path / f"{i}.flash", f"18:fe:34:00:01:{i:02x}") for i in range(1, 5)]
    try:
        ctx = gateways.context([board(s, f"gw-{i}") for i, s in enumerate(servers, 1)])
        jobs, _ = station_jobs(ctx, "@local")
        screen = io.StringIO()
        display = flash_progress(Console(file=screen, width=120, force_terminal=False))
        with display:
            results = flash_boards(
                jobs, registry, parallel=4, progress=display, options=options(tmp_path)
            )
        assert [r.status for r in results] == ["flashed"] * 4
        assert [r.device_id for r in results] == ["gw-1", "gw-2", "gw-3", "gw-4"]
        text = screen.getvalue()
        for i in range(1, 5):
            assert f"gw-{i}" in text
        for result in results:
            assert result.log_path is not None
            log = result.log_path.read_text()
            assert stat.S_IMODE(result.log_path.stat().st_mode) == 0o600
            assert f"flashing device {result.device_id} on {result.port}" in log
            assert "Stub flasher running." in log  # esptool's own lines, routed per board
            assert "verified filesystem" in log
            assert WIFI_PASSPHRASE not in log and "PRIVATE KEY" not in log
            other = {r.device_id for r in results} - {result.device_id}
            assert not any(f"device {d} " in log for d in other)
    finally:
        for server in servers:
            server.close()


def test_refused_runs_leave_a_truthful_entry_and_a_matching_board_refreshes_a_stale_one(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    from iotfleet.flash import FlashRecord
    from iotfleet.flash.engine import _port_lock

    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:42") as gw:
        ctx = gateways.context([board(gw, "gw-1")])
        jobs, _ = station_jobs(ctx, "@local")
        assert flash_boards(jobs, registry, progress=False, options=options(tmp_path))[0].ok
        truthful = registry.history("gw-1")
        assert [r.result for r in truthful] == ["flashed"] and truthful[0].provisioned

        # A concurrent run holds the port, then another client holds the board itself.
        with _port_lock(tmp_path / "locks", "@local", gw.url):
            [busy] = flash_boards(jobs, registry, progress=False, options=options(tmp_path))
        assert busy.kind == "busy" and not busy.ok
        import socket

        with socket.create_connection(("127.0.0.1", gw.port)):
            time.sleep(0.1)
            [taken] = flash_boards(
                jobs, registry, progress=False, options=options(tmp_path, connect_attempts=1)
            )
        assert not taken.ok
        assert registry.history("gw-1") == truthful  # neither touched the entry

        # An input error (bad layout) in a run of the whole station (the fleet's registry).
        assert flash_station(ctx, "@local", progress=False, options=options(tmp_path))[0].ok
        fleet_registry = FlashRegistry(ctx.registry_path)
        try:
            before = fleet_registry.history("gw-1")
            bad = gateways.context([board(gw, "gw-1", layout="4M7M")])
            [refused] = flash_station(bad, "@local", progress=False, options=options(tmp_path))
            assert refused.kind == "input"
            assert fleet_registry.history("gw-1") == before and before[-1].provisioned
        finally:
            fleet_registry.close()

        # A planning pass (dry run) of a board that matches its entry: nothing to refresh.
        [plan] = flash_boards(
            jobs, registry, progress=False, options=options(tmp_path), dry_run=True
        )
        assert plan.status == "unchanged" and not plan.registry_stale

        # An entry that lies (what earlier versions wrote for a busy port): the planning pass
        # flags it, and the executing run records what the board holds, writing nothing.
        registry.record(
            FlashRecord(
                station="@local",
                port=gw.url,
                device_id="gw-1",
                result="failed",
                provisioned=False,
                message="port busy",
            )
        )
        programmed = gw.counters.bytes_programmed
        [plan] = flash_boards(
            jobs, registry, progress=False, options=options(tmp_path), dry_run=True
        )
        assert plan.status == "unchanged" and plan.registry_stale
        assert registry.latest("gw-1") is not None and not registry.is_provisioned("gw-1")
        [refresh] = flash_boards(jobs, registry, progress=False, options=options(tmp_path))
        assert refresh.status == "unchanged" and gw.counters.bytes_programmed == programmed
        latest = registry.latest("gw-1")
        assert latest is not None and latest.provisioned and latest.result == "unchanged"
        assert latest.image_sha256 == truthful[0].image_sha256 and latest.mac == "18:fe:34:00:00:42"
        [plan] = flash_boards(
            jobs, registry, progress=False, options=options(tmp_path), dry_run=True
        )
        assert not plan.registry_stale


def test_dry_run_writes_and_records_nothing(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:21") as gw:
        ctx = gateways.context([board(gw, "gw-1")])
        jobs, _ = station_jobs(ctx, "@local")
        [plan] = flash_boards(
            jobs, registry, progress=False, options=options(tmp_path), dry_run=True
        )
        assert plan.status == "outdated" and plan.changed and not plan.ok
        assert plan.message == "would write firmware, filesystem"
        assert gw.counters.bytes_programmed == 0 and registry.history() == []
        assert (
            flash_boards(jobs, registry, progress=False, options=options(tmp_path))[0].status
            == "flashed"
        )
        [again] = flash_boards(
            jobs, registry, progress=False, options=options(tmp_path), dry_run=True
        )
        assert again.status == "unchanged" and not again.changed


def test_cli_flash_and_registry_under_pyinfra_gevent(
    gateways: GatewayFleet, tmp_path: Path
) -> None:
    """`iotfleet gateway flash -i INVENTORY` loads the inventory through pyinfra, which
    monkey-patches threads and sockets with gevent (as in a real rollout): the engine must
    still flash. Run as a process: the patch must not leak into this test session."""
    with emulated(tmp_path / "a.flash", "18:fe:34:00:00:31") as gw:
        gateways.context([board(gw, "gw-6")])  # the PKI tier has run
        inventory = tmp_path / "inventory.py"
        inventory.write_text(
            "brokers = [('localhost', {'ssh_hostname': '127.0.0.1', 'fleet_name': 'unit',\n"
            f"    'fleet_devices': {DEVICES!r},\n"
            "    'fleet_clients': [{'name': 'ops', 'roles': ['admin']}]})]\n"
            "flash_stations = [('@local', {'espgw_wifi_ssid': 'unit-wifi',\n"
            f"    'espgw_wifi_passphrase': 'env:{WIFI_ENV}',\n"
            f"    'espgw_firmware': {str(gateways.firmware)!r},\n"
            f"    'espgw_boards': [{{'port': {gw.url!r}, 'device': 'gw-6',\n"
            f"                       'flash_file': {str(gw.flash.path)!r}}}]}})]\n"
        )

        def iotfleet(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "iotfleet", "gateway", *args, "-i", str(inventory)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=tmp_path,
                env={**os.environ, "COLUMNS": "200"},
            )

        flashed = iotfleet("flash", "--no-progress")
        assert flashed.returncode == 0, flashed.stdout + flashed.stderr
        assert "gw-6" in flashed.stdout and "flashed" in flashed.stdout
        assert gw.counters.write_sessions == 2
        again = iotfleet("flash", "--no-progress")
        assert again.returncode == 0 and "unchanged" in again.stdout
        shown = iotfleet("registry")
        assert shown.returncode == 0, shown.stderr
        assert "gw-6" in shown.stdout and "18:fe:34:00:00:31" in shown.stdout
        gw.flash.flush()
        inspected = subprocess.run(
            [sys.executable, "-m", "iotfleet", "gateway", "inspect", "gw-6", "-i", str(inventory)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert inspected.returncode == 0, inspected.stderr
        assert "/client.key" in inspected.stdout and '"device_id": "gw-6"' in inspected.stdout


def test_small_chip_needs_a_small_layout(
    gateways: GatewayFleet, registry: FlashRegistry, tmp_path: Path
) -> None:
    with BoardServer(tmp_path / "1m.flash", "18:fe:34:00:00:41", flash_size=1 << 20) as gw:
        [refused] = flash(gateways, registry, tmp_path, [board(gw, "gw-1")])
        assert refused.kind == "chip"
        assert "the board has 1024 KB of flash; layout 4M2M needs 4096 KB" in refused.message
        assert gw.counters.bytes_programmed == 0
        [done] = flash(gateways, registry, tmp_path, [board(gw, "gw-1", layout="1M64")])
        assert done.status == "flashed", done.message
        gw.flash.flush()
        files = read_flash_files(gw.flash.path, "1M64")  # 16 blocks of 4 KB at 0xEB000
        assert Bundle.from_files(files).config.device_id == "gw-1"


def test_stand_in_firmware_is_refused_for_a_real_serial_device(
    gateways: GatewayFleet, tmp_path: Path
) -> None:
    ctx = gateways.context(
        [
            {"port": "/dev/ttyUSB0", "device": "gw-1"},
            # An emulated board behind a device path (the lab's attached boards) may have it.
            {"port": "/dev/ttyUSB1", "device": "gw-2", "flash_file": str(tmp_path / "gw2.flash")},
        ]
    )
    jobs, refused = station_jobs(ctx, "@local")
    assert [j.device_id for j in jobs] == ["gw-2"]
    [result] = refused
    assert result.kind == "input" and result.device_id == "gw-1"
    assert "espgw_firmware" in result.message and "stand-in image" in result.message
    assert "files/firmware/iotfleet-gateway/" in result.message


REMOTE_SERIAL_PORTS = [
    "socket://192.168.1.20:4000",  # ser2net on another machine
    "rfc2217://bench1.plant.example:2217",  # an RFC 2217 server, by name (never resolved)
    "socket://[2001:db8::7]:4000",
    "rfc2217://localhost.plant.example:2217",  # a name that merely starts like loopback
    "socket://0.0.0.0:4000",
]
LOOPBACK_SERIAL_PORTS = [
    "socket://127.0.0.1:4000",  # where the lab's emulators listen
    "socket://127.8.9.10:4000",  # all of 127.0.0.0/8
    "rfc2217://[::1]:2217",
    "socket://localhost:4000",
    "rfc2217://LOCALHOST:2217",
]


@pytest.mark.parametrize("port", REMOTE_SERIAL_PORTS)
def test_stand_in_firmware_is_refused_for_a_network_serial_port_on_another_host(
    gateways: GatewayFleet, port: str
) -> None:
    """A real board behind ser2net or RFC 2217 on another machine would get a dead image."""
    ctx = gateways.context([{"port": port, "device": "gw-1"}])
    jobs, [refused] = station_jobs(ctx, "@local")
    assert jobs == []
    assert refused.kind == "input" and refused.device_id == "gw-1"
    assert "espgw_firmware" in refused.message and f"{port} is not one" in refused.message


@pytest.mark.parametrize("port", LOOPBACK_SERIAL_PORTS)
def test_stand_in_firmware_is_allowed_on_a_loopback_serial_port(
    gateways: GatewayFleet, port: str
) -> None:
    """Emulators listen on this machine's loopback; no flash file is needed to recognise them."""
    ctx = gateways.context([{"port": port, "device": "gw-1"}])
    jobs, refused = station_jobs(ctx, "@local")
    assert refused == [] and [j.port for j in jobs] == [port]


def test_a_named_flash_file_makes_any_port_emulated(gateways: GatewayFleet, tmp_path: Path) -> None:
    ctx = gateways.context(
        [
            {"port": port, "device": f"gw-{i}", "flash_file": str(tmp_path / f"{i}.flash")}
            for i, port in enumerate(REMOTE_SERIAL_PORTS[:2], 1)
        ]
    )
    jobs, refused = station_jobs(ctx, "@local")
    assert refused == [] and [j.device_id for j in jobs] == ["gw-1", "gw-2"]


def test_a_generated_wifi_passphrase_is_refused_for_a_real_board(
    gateways: GatewayFleet, tmp_path: Path
) -> None:
    firmware = tmp_path / "real-firmware.bin"
    firmware.write_bytes(b"\xe9" + bytes(4095))  # not the stand-in image
    ctx = gateways.context(
        [
            {"port": "/dev/ttyUSB0", "device": "gw-1", "firmware": str(firmware)},
            {"port": "/dev/ttyUSB1", "device": "gw-2", "flash_file": str(tmp_path / "gw2.flash")},
        ],
        wifi_passphrase="generated",
    )
    jobs, refused = station_jobs(ctx, "@local")
    assert [j.device_id for j in jobs] == ["gw-2"]  # an emulated board may have one
    [result] = refused
    assert result.device_id == "gw-1" and "espgw_wifi_passphrase" in result.message
    assert "no access point knows" in result.message


def test_rollout_refuses_bad_boards_up_front_listing_each_once(
    gateways: GatewayFleet, tmp_path: Path
) -> None:
    from iotfleet.roles.esp8266_gateway import refuse_bad_board_inputs, station_of
    from iotfleet.roles.refusal import RolloutRefusedError

    ctx = gateways.context(
        [
            {"port": "/dev/ttyUSB0", "device": "gw-1"},
            {"port": "/dev/ttyUSB1", "device": "gw-2", "layout": "1M9M"},
        ]
    )
    with pytest.raises(RolloutRefusedError) as stopped:
        refuse_bad_board_inputs(ctx, station_of(ctx, "@local"))
    message = str(stopped.value)
    assert message.startswith("iotfleet: cannot flash the boards of @local:")
    lines = message.splitlines()[1:]
    assert len(lines) == 2 and "gw-1" in lines[0] and "gw-2" in lines[1], message
    assert "stand-in image" in lines[0] and "1M9M" in lines[1], message


def test_a_planning_pass_creates_no_registry_and_no_log(
    gateways: GatewayFleet, tmp_path: Path
) -> None:
    with BoardServer(tmp_path / "gw.flash", "18:fe:34:00:00:51") as gw:
        ctx = gateways.context([board(gw, "gw-1")])
        ctx.registry_path.unlink(missing_ok=True)
        before = sorted(ctx.state_dir.rglob("*"))
        [plan] = flash_station(ctx, "@local", progress=False, dry_run=True)
        assert plan.status == "outdated", plan.message
        assert not ctx.registry_path.exists(), "a planning pass created the flash registry"
        after = sorted(ctx.state_dir.rglob("*"))
        assert after == before, "a planning pass wrote a log"
        assert gw.counters.bytes_programmed == 0
