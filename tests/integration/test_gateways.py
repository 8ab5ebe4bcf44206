"""ESP8266 gateways on the lab (issue 5): the real pyinfra rollout flashes emulated boards with
the real esptool, the simulated gateways boot from what was flashed and connect over mTLS."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from iotfleet.check.mqtt_probe import NOT_AUTHORIZED, session, succeeded
from iotfleet.device.contract import CA_FILE, CERT_FILE, CONFIG_FILE, KEY_FILE, WIFI_PASS_FILE
from iotfleet.flash import FlashRegistry
from iotfleet.fleet.context import FleetContext
from iotfleet.gateway import GatewaySimulator, read_bundle, read_flash_files
from iotfleet.lab.gateways import stats_file
from iotfleet.roles.dpkg_health import POLICY_RC
from tests.integration.conftest import LabFactory, LabHost, RunningLab
from tests.support.broker_clients import identity_of, target
from tests.support.host_faults import interrupt_dpkg
from tests.support.lab_fleet import lab_context
from tests.support.rollout import Rollout, run_iotfleet, run_pyinfra

pytestmark = pytest.mark.lab

BOARDS = ("gw1", "gw2")


@dataclass
class FlashedLab:
    lab: RunningLab
    first: Rollout

    @property
    def ctx(self) -> FleetContext:
        return lab_context(self.lab.name)

    def flash_file(self, device: str) -> Path:
        board = next(g for g in self.lab.gateways if g["name"] == device)
        return Path(str(board["flash_file"]))

    def programmed(self, device: str) -> int:
        stats = json.loads(Path(stats_file(str(self.flash_file(device)))).read_text())
        return int(stats["bytes_programmed"])


@pytest.fixture(scope="module")
def flashed(lab_factory: LabFactory) -> FlashedLab:
    lab = lab_factory(suite="bookworm", brokers=2, gateways=len(BOARDS))
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()
    return FlashedLab(lab, first)


@pytest.fixture
def simulators(flashed: FlashedLab) -> Iterator[dict[str, GatewaySimulator]]:
    sims = {
        device: GatewaySimulator(read_bundle(flashed.flash_file(device)), telemetry_interval=0.5)
        for device in BOARDS
    }
    for sim in sims.values():
        sim.start()
    yield sims
    for sim in sims.values():
        sim.stop()


def test_rollout_flashes_each_board_with_its_own_identity(flashed: FlashedLab) -> None:
    ctx = flashed.ctx
    registry = FlashRegistry(ctx.registry_path)
    for device in BOARDS:
        assert f"{device} (socket://127.0.0.1:" in flashed.first.output, flashed.first.explain()
        files = read_flash_files(flashed.flash_file(device))
        assert set(files) >= {CONFIG_FILE, CA_FILE, CERT_FILE, KEY_FILE, WIFI_PASS_FILE}
        certificate = x509.load_pem_x509_certificate(files[CERT_FILE])
        common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert common_name == device
        assert files[CERT_FILE] == ctx.pki.certificate_pem(device)
        assert files[CA_FILE] == ctx.pki.ca_chain_pem()
        record = registry.latest(device)
        assert record is not None and record.provisioned, record
        pki_record = ctx.pki.record(device)
        assert pki_record is not None
        board = next(g for g in flashed.lab.gateways if g["name"] == device)
        assert record.mac is not None and record.mac.lower() == str(board["mac"]).lower()
        assert record.cert_serial is not None
        assert int(record.cert_serial, 16) == certificate.serial_number
        assert (ctx.state_dir / "flash-logs").is_dir()
        # The key is only on the board: never printed by the rollout.
        assert b"PRIVATE KEY" in files[KEY_FILE]
    assert "PRIVATE KEY" not in flashed.first.output


def test_flashed_gateways_connect_over_mtls_publish_and_obey_commands(
    flashed: FlashedLab, simulators: dict[str, GatewaySimulator]
) -> None:
    ctx = flashed.ctx
    broker = flashed.lab.hosts[0].fqdn
    with session(target(ctx, broker, 8883), identity_of(ctx, "ops")) as admin:
        admin.subscribe("devices/+/telemetry/#")
        admin.subscribe("devices/+/status")
        for device, sim in simulators.items():
            assert sim.wait_connected(30), (device, sim.stats)
        for device in BOARDS:
            assert admin.wait_for_message(f"devices/{device}/telemetry/", timeout=15), device
        assert succeeded(admin.publish("devices/gw1/commands/ping", b'{"id": 7}'))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _pongs(admin.messages("devices/gw1/status")):
            time.sleep(0.1)
        statuses = admin.messages("devices/gw1/status")
        assert _pongs(statuses) == [{"command": "ping", "ok": True, "id": 7, "reply": "pong"}], [
            m.payload for m in statuses
        ]
    # Each gateway is refused on the other's topics.
    assert simulators["gw1"].publish("devices/gw2/telemetry/state", "spoof") == NOT_AUTHORIZED
    assert simulators["gw2"].publish("devices/gw1/status", "spoof") == NOT_AUTHORIZED
    assert succeeded(simulators["gw2"].publish("devices/gw2/telemetry/state", "21.5"))


def _pongs(messages: list[mqtt.MQTTMessage]) -> list[object]:
    replies = [json.loads(m.payload) for m in messages if m.payload.startswith(b"{")]
    return [r for r in replies if isinstance(r, dict) and r.get("reply") == "pong"]


def test_second_rollout_writes_nothing(flashed: FlashedLab) -> None:
    before = {device: flashed.programmed(device) for device in BOARDS}
    again = run_pyinfra(flashed.lab.name)
    assert again.returncode == 0, again.explain()
    assert (again.changed, again.errors) == (0, 0), again.explain()
    # The results table: hosts, success, error, no change of the flashing operation.
    row = re.search(
        r"\| Flash 2 ESP8266 board\(s\)[^\n]*?\s(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*\n", again.output
    )
    assert row and row.groups() == ("1", "-", "-", "1"), again.explain()
    assert {device: flashed.programmed(device) for device in BOARDS} == before


def test_a_concurrent_run_leaves_the_registry_truthful_and_a_no_change_run_refreshes_it(
    flashed: FlashedLab,
) -> None:
    from iotfleet.flash import FlashRecord
    from iotfleet.flash.engine import _port_lock, port_lock_dir

    registry = FlashRegistry(flashed.ctx.registry_path)
    truthful = registry.history("gw1")
    assert truthful and truthful[-1].provisioned, truthful
    board = truthful[-1]
    before = {device: flashed.programmed(device) for device in BOARDS}

    # Another flash holds gw1's port for the whole rollout: that board fails, naming why, the
    # other is still checked, and the registry keeps what it knew.
    with _port_lock(port_lock_dir(), board.station, board.port):
        busy = run_pyinfra(flashed.lab.name, "deploy/gateways.py")
    assert busy.returncode != 0, busy.explain()
    assert f"port {board.port} is busy: another iotfleet flash is using it" in busy.output
    assert registry.history("gw1") == truthful

    # An entry that lies (what earlier versions recorded for a busy port): the next rollout,
    # which has nothing to write, reads the board's MD5s and records what it holds.
    registry.record(
        FlashRecord(
            station=board.station,
            port=board.port,
            device_id="gw1",
            result="failed",
            provisioned=False,
            message=f"port {board.port} is busy",
        )
    )
    refresh = run_pyinfra(flashed.lab.name, "deploy/gateways.py")
    assert refresh.returncode == 0, refresh.explain()
    assert "gw1 (" in refresh.output and "unchanged" in refresh.output, refresh.explain()
    latest = registry.latest("gw1")
    assert latest is not None and latest.provisioned and latest.result == "unchanged", latest
    assert (latest.mac, latest.image_sha256) == (board.mac, board.image_sha256)
    assert {device: flashed.programmed(device) for device in BOARDS} == before

    again = run_pyinfra(flashed.lab.name, "deploy/gateways.py")
    assert again.returncode == 0, again.explain()
    assert (again.changed, again.errors) == (0, 0), again.explain()
    registry.close()


# -- a flash station over SSH: a board on a lab host's /dev/ttyUSB0 -----------------------------


@pytest.fixture
def station_board(flashed: FlashedLab) -> Iterator[tuple[LabHost, dict[str, object]]]:
    """gw2, wiped, plugged into the second lab host as /dev/ttyUSB0 (unplugged afterwards)."""
    lab = flashed.lab
    station = lab.hosts[1]
    board = next(g for g in lab.gateways if g["name"] == "gw2")
    wiped = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", "esp8266", "--port",
         f"socket://127.0.0.1:{board['port']}", "--before", "no-reset", "--after", "no-reset",
         "erase-region", "0x200000", "0x1FA000"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert wiped.returncode == 0, wiped.stdout + wiped.stderr
    attached = run_iotfleet("lab", "attach", "--name", lab.name, "gw2", station.name)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    try:
        yield station, board
    finally:
        detached = run_iotfleet("lab", "detach", "--name", lab.name, "gw2")
        assert detached.returncode == 0, detached.stdout + detached.stderr


def test_a_board_on_an_ssh_station_device_path_is_flashed_through_its_ssh_connection(
    flashed: FlashedLab, station_board: tuple[LabHost, dict[str, object]]
) -> None:
    lab = flashed.lab
    station, board = station_board
    tmp_before = lab.ssh(station, "find /tmp /var/tmp -mindepth 1 | sort").stdout
    before = flashed.programmed("gw2")

    rollout = run_pyinfra(lab.name)
    assert rollout.returncode == 0, rollout.explain()
    assert "gw2 (/dev/ttyUSB0, MAC" in rollout.output, rollout.explain()
    assert "flashed filesystem" in rollout.output, rollout.explain()
    assert "PRIVATE KEY" not in rollout.output
    written = flashed.programmed("gw2")
    assert written > before
    record = FlashRegistry(flashed.ctx.registry_path).latest("gw2")
    assert record is not None and record.provisioned, record
    assert (record.station, record.port) == (station.fqdn, "/dev/ttyUSB0")
    assert record.mac is not None and record.mac.lower() == str(board["mac"]).lower()

    # What was written through the relay is the gateway's identity: it connects over mTLS.
    sim = GatewaySimulator(read_bundle(flashed.flash_file("gw2")), telemetry_interval=0.5)
    sim.start()
    try:
        assert sim.wait_connected(30), sim.stats
        assert succeeded(sim.publish("devices/gw2/telemetry/state", "from the station"))
    finally:
        sim.stop()

    # The station got pyserial from the rollout; the relay is gone and left nothing behind.
    lab.ssh(station, "dpkg-query -W -f='${Status}' python3-serial | grep -q 'install ok'")
    assert lab.ssh(station, "pgrep -f 'iotfleet serial relay'", check=False).returncode == 1
    assert lab.ssh(station, "find /tmp /var/tmp -mindepth 1 | sort").stdout == tmp_before
    # Nothing listens on the station for it: only sshd and the broker's listeners.
    listening = lab.ssh(station, "ss -Htlnp").stdout
    assert "python3" not in listening, listening

    # The same station from the CLI, over the OpenSSH client: the board is found unchanged.
    cli = run_iotfleet("gateway", "flash", "-i", "inventory/lab.py", "--station", station.fqdn,
                       "--no-progress", lab_name=lab.name)  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "unchanged" in cli.stdout and "/dev/ttyUSB0" in cli.stdout, cli.stdout

    again = run_pyinfra(lab.name)
    assert again.returncode == 0, again.explain()
    assert (again.changed, again.errors) == (0, 0), again.explain()
    assert flashed.programmed("gw2") == written


def test_a_station_whose_dpkg_was_interrupted_heals_and_flashes(
    flashed: FlashedLab, station_board: tuple[LabHost, dict[str, object]]
) -> None:
    """A killed dpkg on the station (mid-unpack of pyserial): apt refuses every install there;
    the gateways' rollout repairs dpkg, installs pyserial, leaves no service-start guard and
    flashes through the relay; the next run changes nothing."""
    lab = flashed.lab
    station, _ = station_board
    interrupt_dpkg(lab, station, "python3-serial")
    refused = lab.ssh(station, "apt-get install -y -qq python3-serial", check=False)
    assert refused.returncode != 0 and "dpkg was interrupted" in refused.stderr, refused

    started = time.monotonic()
    healed = run_pyinfra(lab.name, "deploy/gateways.py")
    seconds = time.monotonic() - started
    assert healed.returncode == 0, healed.explain()
    assert "gw2 (/dev/ttyUSB0, MAC" in healed.output, healed.explain()
    assert lab.ssh(station, "ls -A /var/lib/dpkg/updates; dpkg --audit").stdout.strip() == ""
    status = lab.ssh(station, "dpkg-query -W -f='${Status}' python3-serial").stdout
    assert status == "install ok installed"
    lab.ssh(station, f"test ! -e {POLICY_RC}")

    again = run_pyinfra(lab.name, "deploy/gateways.py")
    assert again.returncode == 0, again.explain()
    assert (again.changed, again.errors) == (0, 0), again.explain()
    print(
        f"\n[recovery] interrupted dpkg on a flash station: healed and flashed in {seconds:.1f} s"
    )
