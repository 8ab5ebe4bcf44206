"""Boards on device paths (``iotfleet lab attach``): validation, state, inventory, and the
serial bridge script itself (run here on a local pty, no lab needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.lab import attach as attach_mod
from iotfleet.lab.attach import (
    BRIDGE_SCRIPT,
    attach,
    bridge_argv,
    bridge_state,
    check_device,
    detach,
    host_init_pid,
    plan_attach,
)
from iotfleet.lab.errors import LabError
from iotfleet.lab.inventory import lab_inventory_groups
from iotfleet.lab.packages import REPO_PACKAGES
from iotfleet.lab.procs import start_time
from iotfleet.lab.state import (
    Attachment,
    GatewayState,
    LabState,
    ProcessRef,
    lab_paths,
    load_state,
    save_state,
)
from tests.unit.test_lab_state import sample_state

DEAD = ProcessRef(pid=999_999_999, start_time=1)  # no such process


def two_of_each() -> LabState:
    state = sample_state()
    broker2 = {
        "name": "broker2",
        "slot": 2,
        "fqdn": "broker2.demo.iotfleet.test",
        "address": "10.213.0.12",
    }
    state.hosts.append(state.hosts[0].model_copy(update=broker2))
    state.gateways.append(
        GatewayState(name="gw2", port=40002, mac="18:FE:34:00:00:02", flash_file="/tmp/gw2.flash")
    )
    return state


def attached(state: LabState, gateway: str, host: str, device: str = "/dev/ttyUSB0") -> LabState:
    gw = state.gateway(gateway)
    assert gw is not None
    gw.attachment = Attachment(host=host, device=device, bridge=DEAD)
    return state


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "device", ["/dev/ttyUSB0", "/dev/ttyACM1", "/dev/serial/by-id/usb-Silicon_Labs_CP2102-if00"]
)
def test_device_paths_accepted(device: str) -> None:
    assert check_device(device) == device


@pytest.mark.parametrize(
    ("device", "why"),
    [
        ("ttyUSB0", "absolute path"),
        ("dev/ttyUSB0", "absolute path"),
        ("/tmp/ttyUSB0", "under /dev"),
        ("/dev/../etc/passwd", "under /dev"),
        ("/dev//ttyUSB0", "under /dev"),
        ("/dev/ttyUSB0/", "under /dev"),
        ("/dev", "under /dev"),
        ("/dev/tty USB0", "under /dev"),
        ("/dev/pts/3", "/dev/pts belongs"),
    ],
)
def test_device_paths_refused(device: str, why: str) -> None:
    with pytest.raises(LabError, match="--device") as caught:
        check_device(device)
    assert why in str(caught.value)


def test_plan_names_unknown_gateway_and_host() -> None:
    state = two_of_each()
    with pytest.raises(LabError, match=r"no gateway 'gw9' \(gateways: gw1, gw2\)"):
        plan_attach(state, "gw9", "broker1", "/dev/ttyUSB0")
    with pytest.raises(LabError, match=r"no host 'nope' \(hosts: broker1, broker2\)"):
        plan_attach(state, "gw1", "nope", "/dev/ttyUSB0")


def test_plan_refuses_a_gateway_attached_elsewhere() -> None:
    state = attached(two_of_each(), "gw1", "broker1")
    for host, device in (("broker2", "/dev/ttyUSB0"), ("broker1", "/dev/ttyUSB1")):
        with pytest.raises(LabError) as caught:
            plan_attach(state, "gw1", host, device)
        message = str(caught.value)
        assert "already attached to broker1 at /dev/ttyUSB0" in message
        assert "iotfleet lab detach gw1 --name demo" in message


def test_plan_refuses_a_device_path_taken_on_that_host() -> None:
    state = attached(two_of_each(), "gw1", "broker1")
    with pytest.raises(LabError, match=r"/dev/ttyUSB0 on broker1 is already gateway 'gw1'"):
        plan_attach(state, "gw2", "broker1", "/dev/ttyUSB0")
    # The same path on another host is another device.
    assert plan_attach(state, "gw2", "broker2", "/dev/ttyUSB0").already is False


def test_plan_same_place_again_is_not_a_change() -> None:
    state = attached(two_of_each(), "gw1", "broker1")
    plan = plan_attach(state, "gw1", "broker1", "/dev/ttyUSB0")
    assert plan.already and plan.host.name == "broker1" and plan.gateway.name == "gw1"


# --------------------------------------------------------------------------- commands


def test_attach_refusals_change_nothing(tmp_path: Path) -> None:
    path = lab_paths("demo", tmp_path).state_file
    save_state(path, attached(two_of_each(), "gw1", "broker1"))
    before = path.read_bytes()
    for gateway, host, device, expected in [
        ("gw9", "broker1", "/dev/ttyUSB0", "no gateway 'gw9'"),
        ("gw2", "ghost", "/dev/ttyUSB0", "no host 'ghost'"),
        ("gw1", "broker2", "/dev/ttyUSB0", "already attached to broker1"),
        ("gw2", "broker1", "/dev/ttyUSB0", "already gateway 'gw1'"),
        ("gw2", "broker1", "ttyUSB0", "absolute path"),
    ]:
        with pytest.raises(LabError, match=expected):
            attach("demo", gateway, host, device, root=tmp_path, euid=0)
    assert path.read_bytes() == before


def test_attach_to_a_stopped_host_is_refused(tmp_path: Path) -> None:
    # The host has no live process (sample PIDs are not running), the board is not listening.
    path = lab_paths("demo", tmp_path).state_file
    state = two_of_each()
    state.hosts[1].process = None
    save_state(path, state)
    with pytest.raises(LabError, match="gateway gw2 is not listening"):
        attach("demo", "gw2", "broker2", root=tmp_path, euid=0)
    assert load_state(path) == state


def test_attach_and_detach_need_root_and_a_lab(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="needs root"):
        attach("demo", "gw1", "broker1", root=tmp_path, euid=1000)
    with pytest.raises(LabError, match="needs root"):
        detach("demo", "gw1", root=tmp_path, euid=1000)
    with pytest.raises(LabError, match=r"no lab named 'ghost': run `iotfleet lab up"):
        attach("ghost", "gw1", "broker1", root=tmp_path, euid=0)


def test_detach_is_safe_twice(tmp_path: Path) -> None:
    path = lab_paths("demo", tmp_path).state_file
    save_state(path, attached(two_of_each(), "gw1", "broker1"))
    was = detach("demo", "gw1", root=tmp_path, euid=0)  # its bridge is long gone: still fine
    assert was is not None and (was.host, was.device) == ("broker1", "/dev/ttyUSB0")
    state = load_state(path)
    assert state is not None and all(g.attachment is None for g in state.gateways)
    assert detach("demo", "gw1", root=tmp_path, euid=0) is None
    with pytest.raises(LabError, match="no gateway 'gw7'"):
        detach("demo", "gw7", root=tmp_path, euid=0)


# --------------------------------------------------------------------------- state


def test_state_without_attachments_still_loads(tmp_path: Path) -> None:
    """State files written before attachments existed."""
    raw = json.loads(sample_state().model_dump_json())
    for gw in raw["gateways"]:
        del gw["attachment"]
    path = tmp_path / "state.json"
    path.write_text(json.dumps(raw))
    state = load_state(path)
    assert state is not None and state.gateways[0].attachment is None


def test_state_round_trip_with_an_attachment(tmp_path: Path) -> None:
    path = lab_paths("demo", tmp_path).state_file
    state = attached(two_of_each(), "gw2", "broker2", "/dev/ttyACM0")
    save_state(path, state)
    loaded = load_state(path)
    assert loaded == state
    gw2 = loaded.gateway("gw2") if loaded else None
    assert gw2 is not None and gw2.attachment == Attachment(
        host="broker2", device="/dev/ttyACM0", bridge=DEAD
    )


def test_bridge_state() -> None:
    state = attached(two_of_each(), "gw1", "broker1")
    gw1, gw2 = state.gateways
    assert bridge_state(state, gw2) is None
    assert bridge_state(state, gw1) == "stopped"
    assert gw1.attachment is not None
    # A live process whose host is not running: it serves a host boot that is gone.
    gw1.attachment.bridge = ProcessRef(pid=os.getpid(), start_time=start_time(os.getpid()) or 0)
    assert bridge_state(state, gw1) == "stale"


# --------------------------------------------------------------------------- inventory


def test_inventory_lists_an_attached_board_on_its_host(tmp_path: Path) -> None:
    save_state(lab_paths("demo", tmp_path).state_file, attached(two_of_each(), "gw2", "broker2"))
    groups = lab_inventory_groups("demo", root=tmp_path)
    [(local, local_data), (station, data)] = groups["flash_stations"]
    assert local == "@local"
    assert [b["device"] for b in local_data["espgw_boards"]] == ["gw1"]
    assert station == "broker2.demo.iotfleet.test"
    assert data["espgw_boards"] == [
        {
            "port": "/dev/ttyUSB0",
            "device": "gw2",
            "flash_file": "/tmp/gw2.flash",
            "mac": "18:FE:34:00:00:02",
        }
    ]
    # The station is also a broker, reached the same way from either group.
    brokers = dict(groups["brokers"])
    assert {k: v for k, v in data.items() if k != "espgw_boards"} == brokers[station]


def test_inventory_drops_local_without_local_boards(tmp_path: Path) -> None:
    state = attached(attached(two_of_each(), "gw1", "broker1"), "gw2", "broker1", "/dev/ttyUSB1")
    save_state(lab_paths("demo", tmp_path).state_file, state)
    [(station, data)] = lab_inventory_groups("demo", root=tmp_path)["flash_stations"]
    assert station == "broker1.demo.iotfleet.test"
    assert [(b["device"], b["port"]) for b in data["espgw_boards"]] == [
        ("gw1", "/dev/ttyUSB0"),
        ("gw2", "/dev/ttyUSB1"),
    ]


def test_inventory_keeps_a_board_of_a_missing_host_local(tmp_path: Path) -> None:
    save_state(lab_paths("demo", tmp_path).state_file, attached(sample_state(), "gw1", "gone"))
    [(station, data)] = lab_inventory_groups("demo", root=tmp_path)["flash_stations"]
    assert station == "@local"
    assert data["espgw_boards"][0]["port"] == "socket://127.0.0.1:40001"


def test_repo_serves_pyserial_to_stations() -> None:
    assert "python3-serial" in REPO_PACKAGES


# --------------------------------------------------------------------------- host side


def test_host_init_pid_is_the_child_of_nspawn(tmp_path: Path) -> None:
    me = ProcessRef(pid=os.getpid(), start_time=start_time(os.getpid()) or 0)
    for pid, ppid in ((100, 1), (4242, os.getpid()), (7, 4242)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (sys temd) S {ppid} 1 1 0\n")
    (tmp_path / "self").mkdir()
    assert host_init_pid(me, proc=tmp_path) == 4242
    assert host_init_pid(DEAD, proc=tmp_path) is None
    assert host_init_pid(None, proc=tmp_path) is None


def test_bridge_argv_runs_the_hosts_python_in_its_mount_namespace() -> None:
    argv = bridge_argv(4242, 40001, "/dev/ttyUSB0")
    assert argv[:4] == ["nsenter", "--target=4242", "--mount", "--"]
    assert argv[4:7] == ["/usr/bin/python3", "-I", "-c"]
    assert argv[7] == BRIDGE_SCRIPT.read_text()
    assert argv[8:] == ["40001", "/dev/ttyUSB0", "4242"]
    # The network namespace stays this machine's: the emulator is on loopback only.
    assert "--net" not in argv and "-n" not in argv


def test_bridge_script_uses_the_stdlib_only() -> None:
    source = BRIDGE_SCRIPT.read_text()
    assert "iotfleet" not in source.split('"""', 2)[2]  # no import of the package
    assert attach_mod.HOST_PYTHON == "/usr/bin/python3"


class Board:
    """A stand-in emulator: counts connections, answers every chunk with ``ok:<chunk>``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sessions = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.sessions += 1
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(b"ok:" + data)

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(): shut the socket down first,
        # so no thread outlives the test (a later gevent patch deadlocks on live threads).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def board() -> Iterator[Board]:
    b = Board()
    yield b
    b.close()


@pytest.fixture
def host_process() -> Iterator[subprocess.Popen[bytes]]:
    """Stands in for the host's systemd: the bridge ends when it ends."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def start_script(port: int, device: Path, host_pid: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-I", str(BRIDGE_SCRIPT), str(port), str(device), str(host_pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


def talk(device: Path, message: bytes) -> bytes:
    """Open the device like a serial tool (raw), send, read the answer, close."""
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
        assert not attrs[3] & termios.ECHO  # raw from the start: nothing echoes back
        os.write(fd, message)
        deadline = time.monotonic() + 5
        got = b""
        while len(got) < len(message) + 3 and time.monotonic() < deadline:
            got += os.read(fd, 4096)
        return got
    finally:
        os.close(fd)


def test_bridge_script_one_connection_per_open(
    tmp_path: Path, board: Board, host_process: subprocess.Popen[bytes]
) -> None:
    device = tmp_path / "ttyUSB0"
    proc, ready = start_script(board.port, device, host_process.pid)
    try:
        assert f"{device} -> /dev/pts/" in ready
        assert os.readlink(device).startswith("/dev/pts/")
        assert board.sessions == 0  # nothing connects before the device is used
        assert talk(device, b"\xc0sync\xc0") == b"ok:\xc0sync\xc0"
        assert talk(device, b"again") == b"ok:again"
        deadline = time.monotonic() + 5
        while board.sessions < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert board.sessions == 2  # each open is a fresh session: a reset of the board
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    assert not os.path.lexists(device)  # SIGTERM removes the link


def test_bridge_script_ends_with_its_host(
    tmp_path: Path, board: Board, host_process: subprocess.Popen[bytes]
) -> None:
    device = tmp_path / "ttyUSB0"
    proc, _ = start_script(board.port, device, host_process.pid)
    host_process.kill()
    host_process.wait()
    assert proc.wait(timeout=5) == 0
    assert proc.stdout is not None and "the host stopped" in proc.stdout.read()
    assert not os.path.lexists(device)


def test_bridge_script_refuses_an_existing_path(
    tmp_path: Path, board: Board, host_process: subprocess.Popen[bytes]
) -> None:
    device = tmp_path / "taken"
    device.write_text("mine")
    proc, said = start_script(board.port, device, host_process.pid)
    assert proc.wait(timeout=5) == 2
    assert "cannot make" in said and "File exists" in said
    assert device.read_text() == "mine"
