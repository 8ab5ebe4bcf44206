"""The lab's state file: round trip, damage, atomic writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from iotfleet.lab.errors import LabError
from iotfleet.lab.state import (
    GatewayState,
    HostState,
    LabState,
    ProcessRef,
    lab_paths,
    load_state,
    save_state,
)


def sample_state() -> LabState:
    return LabState(
        name="demo",
        tag="abcd",
        suite="bookworm",
        subnet="10.213.0.0/24",
        bridge="iofabcdbr",
        bridge_address="10.213.0.1",
        base_dir="/var/cache/base",
        repo_port=8642,
        repo_server=ProcessRef(pid=10, start_time=20),
        hosts=[
            HostState(
                name="broker1",
                slot=1,
                fqdn="broker1.demo.iotfleet.test",
                address="10.213.0.11",
                netns="iof-abcd-broker1",
                veth="iofabcdh1",
                machine="iof-abcd-broker1",
                machine_id="0" * 32,
                host_key="ssh-ed25519 AAAA root@broker1",
                process=ProcessRef(pid=11, start_time=21),
            )
        ],
        gateways=[
            GatewayState(
                name="gw1", port=40001, mac="18:FE:34:00:00:01", flash_file="/tmp/gw1.flash"
            )
        ],
    )


def test_state_round_trip(tmp_path: Path) -> None:
    path = lab_paths("demo", tmp_path).state_file
    save_state(path, sample_state())
    assert load_state(path) == sample_state()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_missing_state_is_none(tmp_path: Path) -> None:
    assert load_state(tmp_path / "nope.json") is None


@pytest.mark.parametrize("text", ["{not json", '{"name": "demo"}', '{"version": 7}'])
def test_damaged_state_says_what_to_do(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(LabError) as caught:
        load_state(path)
    message = str(caught.value)
    assert str(path) in message
    assert "iotfleet lab down" in message
    assert "Traceback" not in message


def test_host_lookup() -> None:
    state = sample_state()
    assert state.host("broker1") is not None
    assert state.host("broker9") is None
