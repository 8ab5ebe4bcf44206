"""Rendering a multi-site fleet: sharded files, the edge's bridge section, the core's ACL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from iotfleet.check.file_checks import expected_files
from iotfleet.model import RawHost, build_fleet
from iotfleet.model.fleet import Fleet
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import (
    acl_file,
    broker_identities,
    effective_rules,
    parse_acl,
    render_acl,
)
from iotfleet.mosquitto.bridge import (
    Bridge,
    BridgeTopic,
    edge_bridge,
    parse_bridges,
    render_bridge,
)
from iotfleet.mosquitto.conf import parse_config
from iotfleet.roles.mosquitto.render import BrokerConfig

HOSTS = {
    "core-1": "192.0.2.1",
    "core-2": "core-2.example.net",
    "edge-a1": "192.0.2.11",
    "edge-a2": "192.0.2.12",
    "edge-b1": "192.0.2.21",
}


def fleet_of(**data: Any) -> Fleet:
    fleet_data: dict[str, Any] = {
        "fleet_name": "plants",
        "fleet_core_brokers": ["core-1", "core-2"],
        "fleet_sites": [
            {"name": "a", "edges": ["edge-a1", "edge-a2"]},
            {"name": "b", "edges": ["edge-b1"]},
        ],
        "fleet_devices": [
            {"id": "gw-a1", "site": "a"},
            {"id": "gw-a2", "site": "a", "topic_prefix": "plant-a/line-2"},
            {"id": "gw-a-stolen", "site": "a", "revoked": "keyCompromise"},
            {"id": "gw-b1", "site": "b", "password": "generated"},
        ],
        "mosquitto_listeners": [{"port": 8883}, {"port": 8884, "auth": "password"}],
    }
    fleet_data.update(data)
    return build_fleet(
        [
            RawHost(name, ("brokers",), {"ssh_hostname": address, **fleet_data})
            for name, address in HOSTS.items()
        ]
    )


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return fleet_of()


def test_edge_bridge_goes_to_both_cores_with_failover_and_its_own_identity(fleet: Fleet) -> None:
    bridge = edge_bridge(fleet, "edge-a1")
    assert bridge is not None
    assert bridge.connection == bridge.remote_clientid == "iotfleet-bridge-edge-a1"
    assert bridge.local_clientid == "iotfleet-bridge-edge-a1.local"
    # The bridge verifies the core's certificate: core-1's ssh_hostname is its SAN IP; core-2's
    # ssh_hostname is in no SAN, so its first SAN (its host name) is used.
    assert bridge.addresses == (("192.0.2.1", 8883), ("core-2", 8883))
    assert (bridge.certfile, bridge.keyfile) == (layout.BRIDGE_CERT, layout.BRIDGE_KEY)
    assert bridge.cafile == layout.CA_CHAIN and bridge.tls_version == "tlsv1.2"
    options = dict(bridge.options)
    assert options["bridge_insecure"] == "false" and options["cleansession"] == "false"
    assert options["round_robin"] == "false" and options["notifications_local_only"] == "true"


def test_only_the_sites_active_devices_cross_telemetry_and_status_out_commands_in(
    fleet: Fleet,
) -> None:
    bridge = edge_bridge(fleet, "edge-a2")
    assert bridge is not None
    assert bridge.topics == (
        BridgeTopic("devices/gw-a1/telemetry/#", "out"),
        BridgeTopic("devices/gw-a1/status", "out"),
        BridgeTopic("devices/gw-a1/commands/#", "in"),
        BridgeTopic("plant-a/line-2/telemetry/#", "out"),
        BridgeTopic("plant-a/line-2/status", "out"),
        BridgeTopic("plant-a/line-2/commands/#", "in"),
    )
    assert all(t.qos == 1 for t in bridge.topics)


def test_cores_and_fleets_without_sites_have_no_bridge(fleet: Fleet) -> None:
    assert edge_bridge(fleet, "core-1") is None
    flat = build_fleet([RawHost("mqtt1", ("brokers",), {"fleet_name": "flat"})])
    assert edge_bridge(flat, "mqtt1") is None


def test_render_and_parse_round_trip(fleet: Fleet) -> None:
    bridge = edge_bridge(fleet, "edge-b1")
    assert bridge is not None
    assert parse_bridges(render_bridge(bridge)) == [bridge]
    ipv6 = replace(bridge, addresses=(("2001:db8::1", 8883), ("core", 8884)))
    # Mosquitto splits at the last colon and would resolve "[2001:db8::1]" as a name.
    assert "\naddress 2001:db8::1:8883 core:8884\n" in render_bridge(ipv6)
    assert parse_bridges(render_bridge(ipv6)) == [ipv6]
    assert parse_bridges("listener 8883\nallow_anonymous false\n") == []


def test_parse_reads_what_mosquitto_would_from_a_hand_written_bridge() -> None:
    text = "connection x\naddress h:1883\nclientid c\ntopic # both 0\ntopic a\n"
    assert parse_bridges(text) == [
        Bridge(
            connection="x",
            addresses=(("h", 1883),),
            remote_clientid="c",
            local_clientid="",
            cafile="",
            certfile="",
            keyfile="",
            tls_version="",
            topics=(BridgeTopic("#", "both", 0), BridgeTopic("a", "out", 0)),
            options=(),
        )
    ]
    with pytest.raises(ValueError, match="direction 'sideways'"):
        parse_bridges("connection x\ntopic a sideways 1\n")


def test_edge_config_ends_with_its_bridge_and_keeps_its_listeners(fleet: Fleet) -> None:
    config = BrokerConfig(fleet.broker("edge-a1"), fleet)
    text = config.text()
    [bridge] = parse_bridges(text)
    assert bridge == edge_bridge(fleet, "edge-a1")
    # The broker's own listeners are unchanged by the bridge section that follows them.
    assert [lst.port for lst in parse_config(text).listeners] == [8883, 8884]
    # The spare-port candidate must not log in at the cores as the live bridge.
    assert parse_bridges(config.text(candidate=True)) == []
    assert parse_bridges(BrokerConfig(fleet.broker("core-1"), fleet).text()) == []
    moved = {layout.BRIDGE_CERT: "/tmp/x/bridge.pem", layout.CA_CHAIN: "/tmp/x/ca.pem"}
    [moved_bridge] = parse_bridges(config.text(moved))
    assert (moved_bridge.certfile, moved_bridge.cafile) == ("/tmp/x/bridge.pem", "/tmp/x/ca.pem")


def test_core_acl_confines_each_bridge_to_its_sites_device_topics(fleet: Fleet) -> None:
    rendered = acl_file(fleet, "core-1")
    _, general = parse_acl(render_acl(rendered))
    assert general == [f"pattern {a} {t}" for a, t in rendered.patterns]
    site_a = {
        ("write", "devices/gw-a1/telemetry/#"),
        ("write", "devices/gw-a1/status"),
        ("read", "devices/gw-a1/commands/#"),
        ("write", "plant-a/line-2/telemetry/#"),
        ("write", "plant-a/line-2/status"),
        ("read", "plant-a/line-2/commands/#"),
    }
    granted = {
        name: effective_rules(rendered, name)
        for name in (
            "iotfleet-bridge-edge-a1",
            "iotfleet-bridge-edge-a2",
            "iotfleet-bridge-edge-b1",
        )
    }
    assert granted["iotfleet-bridge-edge-a1"] == granted["iotfleet-bridge-edge-a2"] == site_a
    assert granted["iotfleet-bridge-edge-b1"] == {
        ("write", "devices/gw-b1/telemetry/#"),
        ("write", "devices/gw-b1/status"),
        ("read", "devices/gw-b1/commands/#"),
    }
    # Edges carry no bridge users: bridges log in at the cores only.
    edge_users, _ = parse_acl(render_acl(acl_file(fleet, "edge-a1")))
    assert not any(u.startswith("iotfleet-bridge-") for u in edge_users)


def test_a_revoked_sites_bridges_lose_their_acl_at_the_core() -> None:
    sites = [
        {"name": "a", "edges": ["edge-a1", "edge-a2"], "bridge_revoked": "keyCompromise"},
        {"name": "b", "edges": ["edge-b1"]},
    ]
    users, _ = parse_acl(render_acl(acl_file(fleet_of(fleet_sites=sites), "core-2")))
    assert "iotfleet-bridge-edge-a1" not in users and "iotfleet-bridge-edge-b1" in users


def test_a_site_with_its_own_core_bridges_to_that_core_only() -> None:
    sites = [
        {"name": "a", "edges": ["edge-a1", "edge-a2"], "cores": ["core-2"]},
        {"name": "b", "edges": ["edge-b1"]},
    ]
    fleet = fleet_of(fleet_sites=sites)
    bridge = edge_bridge(fleet, "edge-a1")
    assert bridge is not None and bridge.addresses == (("core-2", 8883),)
    users, _ = parse_acl(render_acl(acl_file(fleet, "core-1")))
    assert "iotfleet-bridge-edge-a1" not in users and "iotfleet-bridge-edge-b1" in users


def test_device_entries_exist_only_on_their_sites_brokers_and_the_cores(fleet: Fleet) -> None:
    def acl_users(broker: str) -> set[str]:
        # The ACL's patterns serve any name: the broker's identities are who gets in.
        return set(broker_identities(fleet, broker))

    assert "gw-a1" in acl_users("edge-a1") and "gw-b1" not in acl_users("edge-a1")
    assert "gw-b1" in acl_users("edge-b1") and "gw-a1" not in acl_users("edge-b1")
    assert {"gw-a1", "gw-b1"} <= acl_users("core-1")


def test_password_files_are_sharded_too(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iotfleet.fleet.context import FleetContext
    from iotfleet.mosquitto.passwd import parse_password_file
    from iotfleet.roles.mosquitto.render import service_files

    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path))
    ctx = FleetContext.for_fleet(fleet)

    def password_users(broker: str) -> set[str]:
        _, files = service_files(ctx, fleet.broker(broker))
        [passwd] = [f for f in files if f.path == layout.password_file(8884)]
        return set(parse_password_file(passwd.content.decode()))

    assert "gw-b1" in password_users("edge-b1") and "gw-b1" in password_users("core-2")
    assert "gw-b1" not in password_users("edge-a1")


def test_only_edges_with_a_bridge_keep_a_bridge_identity(fleet: Fleet) -> None:
    bridge_files = {layout.BRIDGE_CERT, layout.BRIDGE_KEY}

    def kept(fleet: Fleet, broker: str) -> set[str]:
        return {f.path for f in expected_files(fleet, fleet.broker(broker))} & bridge_files

    assert kept(fleet, "edge-a1") == kept(fleet, "edge-b1") == bridge_files
    assert kept(fleet, "core-1") == set()
    flat = build_fleet([RawHost("mqtt1", ("brokers",), {"fleet_name": "flat"})])
    assert kept(flat, "mqtt1") == set()
    # A site whose bridge is revoked is cut off: its edges render no bridge and keep no
    # bridge identity (the core refuses the old one by the CRL and has no ACL for it).
    sites = [
        {"name": "a", "edges": ["edge-a1", "edge-a2"], "bridge_revoked": "keyCompromise"},
        {"name": "b", "edges": ["edge-b1"]},
    ]
    revoked = fleet_of(fleet_sites=sites)
    assert edge_bridge(revoked, "edge-a1") is None
    assert "connection " not in BrokerConfig(revoked.broker("edge-a1"), revoked).text()
    assert kept(revoked, "edge-a1") == set() and kept(revoked, "edge-b1") == bridge_files
