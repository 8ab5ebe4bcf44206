"""Each preflight check, fed with its inputs (route table text, free bytes, PATH)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest

from iotfleet.lab import preflight
from iotfleet.lab.errors import LabError

ROUTES = """\
default via 192.0.2.1 dev eth0
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
10.213.0.0/16 via 192.0.2.1 dev eth0
"""


def test_not_root() -> None:
    with pytest.raises(LabError, match="needs root"):
        preflight.check_root(1000)
    preflight.check_root(0)


def fake_path(tmp_path: Path, tools: Sequence[str]) -> str:
    for tool in tools:
        exe = tmp_path / tool
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return str(tmp_path)


def test_missing_tools_name_the_install_command(tmp_path: Path) -> None:
    tools = [t for t in preflight.REQUIRED_TOOLS if t not in {"debootstrap", "systemd-nspawn"}]
    path = fake_path(tmp_path, tools)
    with pytest.raises(LabError) as caught:
        preflight.check_tools(path)
    message = str(caught.value)
    assert "debootstrap, systemd-nspawn" in message
    assert "`apt-get install -y --no-install-recommends debootstrap systemd-container`" in message
    assert "--install-missing" in message


def test_install_missing_runs_the_installer(tmp_path: Path) -> None:
    path = fake_path(tmp_path, [t for t in preflight.REQUIRED_TOOLS if t != "debootstrap"])
    ran: list[list[str]] = []

    def installer(command: Sequence[str]) -> None:
        ran.append(list(command))
        fake_path(tmp_path, ["debootstrap"])

    preflight.check_tools(path, install=True, installer=installer)
    assert ran == [["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]]


def test_all_tools_present(tmp_path: Path) -> None:
    preflight.check_tools(fake_path(tmp_path, list(preflight.REQUIRED_TOOLS)))


def test_subnet_skips_colliding_routes() -> None:
    # 10.213.0.0/16 covers the first candidate; the default route covers nothing.
    assert preflight.choose_subnet(ROUTES) == ipaddress.IPv4Network("10.214.0.0/24")


def test_subnet_skips_other_labs() -> None:
    chosen = preflight.choose_subnet("", taken=["10.213.0.0/24", "10.214.0.0/24"])
    assert chosen == ipaddress.IPv4Network("10.215.0.0/24")


def test_explicit_subnet_colliding_names_the_route() -> None:
    with pytest.raises(LabError) as caught:
        preflight.choose_subnet(ROUTES, explicit="10.213.5.0/24")
    assert "10.213.0.0/16 via 192.0.2.1 dev eth0" in str(caught.value)


def test_explicit_subnet_free_is_used() -> None:
    assert preflight.choose_subnet(ROUTES, explicit="10.99.0.0/24") == ipaddress.IPv4Network(
        "10.99.0.0/24"
    )


@pytest.mark.parametrize("bad", ["nonsense", "10.99.0.1/24", "10.99.0.0/28", "8.8.8.0/24"])
def test_explicit_subnet_must_be_a_private_network(bad: str) -> None:
    with pytest.raises(LabError, match="--subnet"):
        preflight.choose_subnet("", explicit=bad)


def test_own_bridge_route_is_not_a_collision() -> None:
    table = "10.213.0.0/24 dev iofabcdbr proto kernel scope link src 10.213.0.1\n"
    chosen = preflight.choose_subnet(table, explicit="10.213.0.0/24", own_bridge="iofabcdbr")
    assert str(chosen) == "10.213.0.0/24"


def test_no_free_candidate() -> None:
    with pytest.raises(LabError, match="--subnet"):
        preflight.choose_subnet("10.0.0.0/8 dev eth0\n")


def test_disk_too_small_says_how_much_and_where(tmp_path: Path) -> None:
    needed = preflight.disk_needed(base_cached=False, new_hosts=2)
    with pytest.raises(LabError) as caught:
        preflight.check_disk(free=100 << 20, needed=needed, where=tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message
    assert f"{(needed + (1 << 20) - 1) >> 20} MiB" in message
    assert "100 MiB are free" in message
    preflight.check_disk(free=needed, needed=needed, where=tmp_path)


def test_disk_needed_is_small_with_a_cached_base() -> None:
    assert preflight.disk_needed(True, 1) < preflight.disk_needed(False, 1)
    assert preflight.free_bytes(Path("/nonexistent/deeper")) > 0


def test_gateways_need_the_emulator() -> None:
    with pytest.raises(LabError, match=r"iotfleet\.emulator"):
        preflight.check_emulator(2, find_spec=lambda name: None)
    preflight.check_emulator(0, find_spec=lambda name: None)
    preflight.check_emulator(2, find_spec=lambda name: object())
