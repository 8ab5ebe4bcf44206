"""Boards on device paths (``iotfleet lab attach``): an emulated board appears inside a real
lab host as /dev/ttyUSB0, each open of it is a fresh board session, and it goes away cleanly."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.lab.gateways import stats_file
from iotfleet.lab.state import Attachment, LabState, lab_paths, load_state
from tests.integration.conftest import REPO, LabFactory, RunningLab, iotfleet, require_root
from tests.integration.test_lab import _gone, _leftovers

pytestmark = [pytest.mark.lab, pytest.mark.slow]

DEVICE = "/dev/ttyUSB0"

# Opens the device N times like a serial tool (raw termios, no modem lines), sends an esptool
# SYNC frame each time and prints how many reply frames came back.
RAW_CLIENT = textwrap.dedent(
    r"""
    import os, select, struct, sys, termios, time
    device, times = sys.argv[1], int(sys.argv[2])
    data = b"\x07\x07\x12\x20" + b"\x55" * 32
    frame = b"\xc0" + struct.pack("<BBHI", 0, 0x08, len(data), 0) + data + b"\xc0"
    for _ in range(times):
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
        attrs = termios.tcgetattr(fd)
        attrs[0] = attrs[1] = attrs[3] = 0
        attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        os.write(fd, frame)
        got, deadline = b"", time.monotonic() + 5
        while got.count(b"\xc0") < 16 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                got += os.read(fd, 4096)
        os.close(fd)
        print("replies", got.count(b"\xc0") // 2, got[1:3].hex())
    """
)

# The same with pyserial from the lab's own package source, as a station's relay would open it.
PYSERIAL_CLIENT = textwrap.dedent(
    r"""
    import struct, sys, serial
    data = b"\x07\x07\x12\x20" + b"\x55" * 32
    frame = b"\xc0" + struct.pack("<BBHI", 0, 0x08, len(data), 0) + data + b"\xc0"
    port = serial.Serial(sys.argv[1], 115200, timeout=2)
    port.write(frame)
    got = b""
    while got.count(b"\xc0") < 16:
        chunk = port.read(256)
        if not chunk:
            break
        got += chunk
    print("replies", got.count(b"\xc0") // 2)
    try:
        port.rts = False  # a pty has no modem lines: the relay must tolerate this
        print("rts ok")
    except OSError as exc:
        print("rts errno", exc.errno)
    port.close()
    """
)


def run_on(lab: RunningLab, host: str, script: str, *args: str) -> str:
    encoded = base64.b64encode(script.encode()).decode()
    command = f"echo {encoded} | base64 -d > /tmp/itest-client.py && "
    command += f"python3 /tmp/itest-client.py {' '.join(args)}"
    return lab.ssh(host, command, timeout=60).stdout


def state_of(lab: RunningLab) -> LabState:
    state = load_state(lab_paths(lab.name).state_file)
    assert state is not None
    return state


def attachment(lab: RunningLab, gateway: str) -> Attachment | None:
    gw = state_of(lab).gateway(gateway)
    assert gw is not None
    return gw.attachment


def bridge_pid(lab: RunningLab, gateway: str) -> int:
    where = attachment(lab, gateway)
    assert where is not None and where.bridge is not None
    return where.bridge.pid


def sessions(lab: RunningLab, gateway: str) -> int:
    gw = state_of(lab).gateway(gateway)
    assert gw is not None
    try:
        return int(json.loads(Path(stats_file(gw.flash_file)).read_text())["sessions"])
    except FileNotFoundError:
        return 0


def stations(lab: RunningLab) -> dict[str, list[tuple[str, str]]]:
    """``{station: [(device, port), ...]}`` as inventory/lab.py lists them for pyinfra."""
    code = (
        "import json, runpy; g = runpy.run_path('inventory/lab.py');"
        "print(json.dumps({h: [(b['device'], b['port']) for b in d['espgw_boards']]"
        " for h, d in g.get('flash_stations', [])}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=lab.env(), cwd=REPO,
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {k: [tuple(b) for b in v] for k, v in json.loads(out.stdout).items()}


def cli(lab: RunningLab, *args: str) -> subprocess.CompletedProcess[str]:
    return iotfleet("lab", *args, "--name", lab.name, timeout=300)


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> RunningLab:
    # Boards go on broker1: test_gateways makes broker2 its SSH flash station.
    return lab_factory(suite="bookworm", brokers=2, gateways=2)


@pytest.fixture
def detached_after(lab: RunningLab) -> Iterator[None]:
    """The lab is shared by the session: leave every board on the control machine again."""
    yield
    for gw in state_of(lab).gateways:
        if gw.attachment is not None:
            cli(lab, "detach", gw.name)


@pytest.mark.usefixtures("detached_after")
def test_attached_board_answers_on_the_hosts_device(lab: RunningLab) -> None:
    station = lab.host("broker1")
    result = cli(lab, "attach", "gw1", "broker1")
    assert result.returncode == 0, result.stderr
    assert f"gw1 attached to broker1 at {DEVICE}" in result.stderr
    status = cli(lab, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    row = next(line for line in status.stdout.splitlines() if f"broker1:{DEVICE}" in line)
    assert "gw1" in row and "running" in row

    listed = stations(lab)
    assert listed[station.fqdn] == [("gw1", DEVICE)]
    assert all(device != "gw1" for device, _ in listed.get("@local", []))

    # Two opens of the device, two sessions of the board (each one a reset into the ROM).
    before = sessions(lab, "gw1")
    out = run_on(lab, "broker1", RAW_CLIENT, DEVICE, "2").split("\n")
    assert out[:2] == ["replies 8 0108", "replies 8 0108"], out  # SYNC answered 8 times
    deadline = time.monotonic() + 5
    while sessions(lab, "gw1") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sessions(lab, "gw1") == before + 2

    # pyserial, installed from the lab's own package source, opens it like a serial port.
    lab.ssh(
        "broker1",
        "apt-get update -q >/dev/null && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-serial >/dev/null",
        timeout=300,
    )
    out = run_on(lab, "broker1", PYSERIAL_CLIENT, DEVICE).split("\n")
    assert out[:2] == ["replies 8", "rts errno 25"], out  # ENOTTY: no modem lines on a pty

    pid = bridge_pid(lab, "gw1")
    result = cli(lab, "detach", "gw1")
    assert result.returncode == 0 and f"({DEVICE} removed)" in result.stderr, result.stderr
    assert lab.ssh("broker1", f"test -e {DEVICE}", check=False).returncode == 1
    assert _gone(pid)
    assert attachment(lab, "gw1") is None
    assert ("gw1", f"socket://127.0.0.1:{port_of(lab, 'gw1')}") in stations(lab)["@local"]
    again = cli(lab, "detach", "gw1")
    assert again.returncode == 0 and "nothing to do" in again.stderr


def port_of(lab: RunningLab, gateway: str) -> int:
    gw = state_of(lab).gateway(gateway)
    assert gw is not None
    return gw.port


@pytest.mark.usefixtures("detached_after")
def test_attach_refusals_name_what_and_where(lab: RunningLab) -> None:
    assert cli(lab, "attach", "gw1", "broker1").returncode == 0
    before = lab_paths(lab.name).state_file.read_bytes()
    for args, message in [
        (("gw1", "broker2"), f"'gw1' is already attached to broker1 at {DEVICE}"),
        (("gw2", "broker1"), f"{DEVICE} on broker1 is already gateway 'gw1'"),
        (("gw2", "broker1", "--device", "/dev/null"), "/dev/null already exists on broker1"),
        (("gw2", "broker1", "--device", "ttyUSB1"), "give an absolute path"),
        (("gw2", "nope"), "has no host 'nope'"),
        (("gw9", "broker1"), "has no gateway 'gw9'"),
    ]:
        result = cli(lab, "attach", *args)
        assert result.returncode == 1, result.stderr
        assert message in " ".join(result.stderr.split()), result.stderr
    assert lab_paths(lab.name).state_file.read_bytes() == before  # nothing changed
    assert lab.ssh("broker1", "ls /dev/ttyUSB1 /dev/serial 2>&1", check=False).returncode != 0


@pytest.mark.usefixtures("detached_after")
def test_a_restarted_host_gets_a_new_bridge(lab: RunningLab) -> None:
    assert cli(lab, "attach", "gw1", "broker1").returncode == 0
    old = bridge_pid(lab, "gw1")
    host = state_of(lab).host("broker1")
    assert host is not None and host.process is not None
    os.kill(host.process.pid, signal.SIGKILL)  # the host's nspawn, recorded by the lab
    status = cli(lab, "status")
    assert status.returncode == 3
    assert "stale" in status.stdout or "stopped" in status.stdout, status.stdout
    state = state_of(lab)
    up = iotfleet(
        "lab", "up", "--name", lab.name, "--suite", lab.suite,
        "--brokers", str(len(state.hosts)), "--gateways", str(len(state.gateways)),
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert f"re-attached gw1 to broker1 at {DEVICE}" in " ".join(up.stderr.split())
    assert _gone(old) and bridge_pid(lab, "gw1") != old
    assert run_on(lab, "broker1", RAW_CLIENT, DEVICE, "1").startswith("replies 8 0108")
    assert cli(lab, "status").returncode == 0


def test_attach_on_trixie(lab_factory: LabFactory) -> None:
    """The bridge runs on the host's own python3: 3.13 on trixie."""
    lab = lab_factory(suite="trixie", brokers=1, gateways=1)
    try:
        assert cli(lab, "attach", "gw1", "broker1").returncode == 0
        assert run_on(lab, "broker1", RAW_CLIENT, DEVICE, "2").split("\n")[:2] == [
            "replies 8 0108",
            "replies 8 0108",
        ]
        assert cli(lab, "detach", "gw1").returncode == 0
        assert lab.ssh("broker1", f"test -e {DEVICE}", check=False).returncode == 1
    finally:
        cli(lab, "detach", "gw1")


def test_down_stops_bridges_and_leaves_nothing() -> None:
    require_root()
    name = f"{os.environ.get('IOTFLEET_ITEST_PREFIX', 'itest')}-attach"
    try:
        made = iotfleet("lab", "up", "--name", name, "--brokers", "1", "--gateways", "1")
        assert made.returncode == 0, made.stderr
        assert iotfleet("lab", "attach", "gw1", "broker1", "--name", name).returncode == 0
        state = load_state(lab_paths(name).state_file)
        assert state is not None and state.gateways[0].attachment is not None
        bridge = state.gateways[0].attachment.bridge
        assert bridge is not None
    finally:
        down = iotfleet("lab", "down", "--name", name, timeout=300)
    assert down.returncode == 0, down.stderr
    assert _gone(bridge.pid)
    assert _leftovers(name) == []
