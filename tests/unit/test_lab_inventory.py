"""The lab as pyinfra inventory groups, and up's refusals before anything is made."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from iotfleet.check.plan import read_inventory
from iotfleet.lab.environment import Environment
from iotfleet.lab.errors import LabError
from iotfleet.lab.inventory import lab_device_names, lab_inventory_groups
from iotfleet.lab.request import UpRequest
from iotfleet.lab.state import GatewayState, lab_paths, save_state
from iotfleet.lab.up import up
from iotfleet.model import build_fleet
from tests.unit.test_lab_state import sample_state

REPO = Path(__file__).resolve().parents[2]


def test_groups_for_hosts_and_gateways(tmp_path: Path) -> None:
    save_state(lab_paths("demo", tmp_path).state_file, sample_state())
    groups = lab_inventory_groups("demo", root=tmp_path)
    [(fqdn, data)] = groups["brokers"]
    paths = lab_paths("demo", tmp_path)
    assert fqdn == "broker1.demo.iotfleet.test"
    assert data["ssh_hostname"] == "10.213.0.11"
    assert data["ssh_user"] == "root"
    assert data["ssh_key"] == str(paths.ssh_key)
    assert data["ssh_known_hosts_file"] == str(paths.known_hosts)
    assert data["ssh_strict_host_key_checking"] == "yes"
    assert data["lab_suite"] == "bookworm"
    assert data["lab_address"] == "10.213.0.11"
    [(station, station_data)] = groups["flash_stations"]
    assert station == "@local"
    assert station_data["espgw_boards"] == [
        {
            "port": "socket://127.0.0.1:40001",
            "device": "gw1",
            "flash_file": "/tmp/gw1.flash",
            "mac": "18:FE:34:00:00:01",
        }
    ]


def test_no_flash_stations_without_gateways(tmp_path: Path) -> None:
    state = sample_state()
    state.gateways = []
    save_state(lab_paths("demo", tmp_path).state_file, state)
    assert set(lab_inventory_groups("demo", root=tmp_path)) == {"brokers"}


def test_missing_lab_is_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"no lab named 'ghost': run `iotfleet lab up"):
        lab_inventory_groups("ghost", root=tmp_path)


def test_inventory_file_assigns_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("IOTFLEET_LAB", "demo")
    save_state(lab_paths("demo", tmp_path).state_file, sample_state())
    namespace = runpy.run_path(str(REPO / "inventory" / "lab.py"))
    assert [name for name, _ in namespace["brokers"]] == ["broker1.demo.iotfleet.test"]
    assert namespace["flash_stations"][0][0] == "@local"


def test_inventory_file_without_lab_exits_with_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("IOTFLEET_LAB", "ghost")
    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(REPO / "inventory" / "lab.py"))
    assert "no lab named 'ghost'" in str(caught.value.code)


def refused(tmp_path: Path, request: UpRequest, **env: object) -> str:
    environment = Environment(root=tmp_path, hosts_file=tmp_path / "hosts", **env)  # type: ignore[arg-type]
    with pytest.raises(LabError) as caught:
        up(request, env=environment)
    # Nothing was made: no lab directory, no hosts block.
    assert not (tmp_path / "labs" / request.name).exists()
    assert not (tmp_path / "hosts").exists()
    return str(caught.value)


def test_up_refuses_non_root_before_anything(tmp_path: Path) -> None:
    assert "needs root" in refused(tmp_path, UpRequest(name="x"), euid=1000)


def test_up_refuses_gateways_without_emulator(tmp_path: Path) -> None:
    message = refused(
        tmp_path, UpRequest(name="x", gateways=2), euid=0, find_spec=lambda name: None
    )
    assert "--gateways 2" in message and "iotfleet.emulator" in message


def test_up_refuses_missing_tools(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    message = refused(tmp_path, UpRequest(name="x"), euid=0, path=str(tmp_path / "bin"))
    assert "apt-get install -y" in message and "systemd-container" in message


def test_up_refuses_unknown_suite(tmp_path: Path) -> None:
    assert "--suite" in refused(tmp_path, UpRequest(name="x", suite="buster"), euid=0)


def test_state_gateway_model_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        GatewayState.model_validate(
            {"name": "gw1", "port": 1, "mac": "m", "flash_file": "f", "x": 1}
        )


def test_lab_devices_are_in_the_lab_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `lab up --devices 3`: the state says 3, the lab's own inventory (group_data/lab.py
    # included, as pyinfra loads it) has dev000001..dev000003 beside its fixed devices.
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("IOTFLEET_LAB", "demo")
    state = sample_state()
    state.devices = 3
    save_state(lab_paths("demo", tmp_path).state_file, state)
    assert lab_device_names("demo", root=tmp_path) == ["dev000001", "dev000002", "dev000003"]
    fleet = build_fleet(read_inventory(REPO / "inventory" / "lab.py"))
    ids = [d.id for d in fleet.devices]
    assert ids[-3:] == ["dev000001", "dev000002", "dev000003"]
    assert "sensor-1" in ids and "gw1" in ids


def test_a_state_without_devices_loads_with_none(tmp_path: Path) -> None:
    path = lab_paths("demo", tmp_path).state_file
    save_state(path, sample_state())
    data = json.loads(path.read_text())
    data.pop("devices")
    path.write_text(json.dumps(data))
    assert lab_device_names("demo", root=tmp_path) == []


def test_up_refuses_negative_devices(tmp_path: Path) -> None:
    assert "--devices" in refused(tmp_path, UpRequest(name="x", devices=-1), euid=0)
