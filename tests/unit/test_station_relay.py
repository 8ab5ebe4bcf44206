"""The serial relay of SSH flash stations, run here: the relay protocol, its refusals, and the
loopback hand-off that only this process may use (the lab test runs it over real SSH)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotfleet.device import Bundle
from iotfleet.emulator import BoardServer
from iotfleet.flash import BoardResult, FlashRegistry, flash_station
from iotfleet.flash.errors import FlashError
from iotfleet.flash.station_link import (
    CommandStationLink,
    made_by_this_process,
    relay_command,
    relayed_port,
    ssh_argv,
)
from iotfleet.gateway import read_flash_files
from iotfleet.lab.serial_bridge import __file__ as _bridge_file
from iotfleet.model.ssh import ssh_endpoint
from tests.unit.gateway_helpers import GatewayFleet, emulated, gateway_environment, options

BRIDGE_SOURCE = Path(_bridge_file)


def local_link(bin_dir: Path, python_flags: str = "") -> CommandStationLink:
    """A "station" that is this machine: the relay runs under a shell whose python3 is ours."""
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {python_flags} "$@"\n')
    wrapper.chmod(0o755)
    env_path = f"PATH={bin_dir}:{os.environ['PATH']}"
    return CommandStationLink("station.test", ["env", env_path, "sh", "-c"])


@pytest.fixture
def pty_device(tmp_path: Path) -> Iterator[Path]:
    master, slave = os.openpty()
    link = tmp_path / "ttyUSB0"
    link.symlink_to(os.ttyname(slave))
    yield link
    os.close(slave)
    os.close(master)


def test_only_this_process_may_use_the_loopback_hand_off() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as ours:
            conn, peer = server.accept()
            conn.close()
            assert peer[1] == ours.getsockname()[1]
            assert made_by_this_process(peer[1], port)
        script = textwrap.dedent(
            f"""
            import socket, sys
            s = socket.create_connection(("127.0.0.1", {port}))
            print(s.getsockname()[1], flush=True)
            sys.stdin.read()
            """
        )
        other = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert other.stdout is not None
            theirs = int(other.stdout.readline())
            conn, peer = server.accept()
            conn.close()
            assert peer[1] == theirs
            assert not made_by_this_process(peer[1], port)
        finally:
            other.communicate("")


def test_relay_refuses_a_missing_device_naming_it(tmp_path: Path) -> None:
    link = local_link(tmp_path / "bin")
    with pytest.raises(FlashError) as caught, relayed_port(link, "/dev/ttyUSB-iotfleet-none"):
        pass
    assert caught.value.kind == "port"
    assert str(caught.value).startswith("flash station station.test: /dev/ttyUSB-iotfleet-none")
    assert "/dev/ttyUSB-iotfleet-none does not exist on this station" in str(caught.value)


def test_relay_refuses_a_port_another_program_holds(tmp_path: Path, pty_device: Path) -> None:
    holder = os.open(pty_device, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as pyserial's exclusive open does
    try:
        with (
            pytest.raises(FlashError) as caught,
            relayed_port(local_link(tmp_path / "bin"), str(pty_device)),
        ):
            pass
    finally:
        os.close(holder)
    assert caught.value.kind == "busy"
    assert f"cannot open {pty_device}: another program holds it" in str(caught.value)


def test_relay_says_what_the_station_lacks(tmp_path: Path, pty_device: Path) -> None:
    # -S: no site-packages, so no pyserial, as on a station without python3-serial.
    link = local_link(tmp_path / "bin", python_flags="-S")
    with pytest.raises(FlashError) as caught, relayed_port(link, str(pty_device)):
        pass
    assert "pyserial is not installed on this station (Debian: python3-serial)" in str(caught.value)


def test_relay_command_carries_the_device_quoted() -> None:
    command = relay_command("/dev/serial/by-id/usb-1a86 USB2.0-Serial-if00")
    assert command.startswith("python3 -c '")
    assert command.endswith("'/dev/serial/by-id/usb-1a86 USB2.0-Serial-if00'")


def test_ssh_command_line_reaches_the_station_as_pyinfra_does() -> None:
    data: dict[str, object] = {
        "ssh_hostname": "10.0.0.5",
        "ssh_user": "root",
        "ssh_key": "/keys/lab",
        "ssh_port": 2222,
        "ssh_known_hosts_file": "/keys/known_hosts",
        "ssh_strict_host_key_checking": "yes",
    }
    argv = ssh_argv(ssh_endpoint("station1.lab", data))
    assert argv[:2] == ["ssh", "-T"]
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert "IdentityFile=/keys/lab" in argv and "IdentitiesOnly=yes" in argv
    assert "Port=2222" in argv and "HostName=10.0.0.5" in argv
    assert "UserKnownHostsFile=/keys/known_hosts" in argv
    assert argv[-2:] == ["--", "root@10.0.0.5"]
    # pyinfra's defaults: port 22, new host keys accepted and then pinned.
    bare = ssh_argv(ssh_endpoint("station1.lab", {}))
    assert bare[-1] == "station1.lab" and "Port=22" in bare
    assert "StrictHostKeyChecking=accept-new" in bare


# -- the whole path: esptool -> rfc2217 -> relay -> a pty device -> an emulated board --------


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFleet]:
    home = tmp_path_factory.mktemp("home")
    with gateway_environment(home):
        yield GatewayFleet(home, [{"id": "gw-1"}, {"id": "gw-2"}])


@contextlib.contextmanager
def board_on_device(server: BoardServer, device: Path) -> Iterator[Path]:
    """The emulated board behind a pty linked at ``device`` (the lab's serial bridge, run here)."""
    bridge = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-c",
            BRIDGE_SOURCE.read_text(),
            str(server.port),
            str(device),
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bridge.stdout is not None
        assert "serial bridge:" in bridge.stdout.readline()
        assert device.is_symlink()
        yield device
    finally:
        bridge.terminate()
        bridge.wait(timeout=10)


def test_a_station_board_on_a_device_path_is_flashed_through_the_relay(
    gateways: GatewayFleet, tmp_path: Path
) -> None:
    link = local_link(tmp_path / "bin")
    with (
        emulated(tmp_path / "a.flash", "18:fe:34:00:00:31") as gw,
        board_on_device(gw, tmp_path / "ttyUSB0") as device,
    ):
        boards = [{"port": str(device), "device": "gw-1", "flash_file": str(gw.flash.path)}]
        ctx = gateways.context(boards, station_name="station.test")

        def run(**kwargs: Any) -> BoardResult:
            [result] = flash_station(
                ctx,
                "station.test",
                progress=False,
                options=options(tmp_path),
                link=link,
                **kwargs,
            )
            return result

        planned = run(dry_run=True)
        assert planned.status == "outdated", planned.message
        first = run()
        assert first.status == "flashed", first.message
        assert first.port == str(device) and first.station == "station.test"
        assert first.mac == "18:fe:34:00:00:31"
        gw.flash.flush()
        bundle = Bundle.from_files(read_flash_files(gw.flash.path, "4M2M"))
        assert bundle.certificate_pem == ctx.pki.certificate_pem("gw-1")
        programmed = gw.counters.bytes_programmed
        again = run()
        assert again.status == "unchanged", again.message
        assert gw.counters.bytes_programmed == programmed

        # Without the station's connection the board cannot be reached, and says why.
        [unlinked] = flash_station(ctx, "station.test", progress=False, options=options(tmp_path))
        assert unlinked.kind == "port"
        assert "flashed over that station's SSH connection by the rollout" in unlinked.message
    registry = FlashRegistry(ctx.registry_path)
    try:
        record = registry.latest("gw-1")
    finally:
        registry.close()
    assert record is not None and record.station == "station.test"
