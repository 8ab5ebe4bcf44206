"""Sites in the inventory: edges, cores, who belongs where, all problems named at once."""

from __future__ import annotations

from typing import Any

import pytest

from iotfleet.device.image import gateway_broker_names
from iotfleet.model import InventoryError, RawHost, build_fleet
from iotfleet.model.keys import inventory_keys
from iotfleet.model.topology import bridge_listener_port

BROKERS = ("core-1", "core-2", "edge-a1", "edge-a2", "edge-b1")


def sited(**fleet: Any) -> list[RawHost]:
    """Five brokers; fleet-wide data on the first (the model reads fleet keys from any host)."""
    data: dict[str, Any] = {
        "fleet_name": "plants",
        "fleet_core_brokers": ["core-1", "core-2"],
        "fleet_sites": [
            {"name": "a", "edges": ["edge-a1", "edge-a2"]},
            {"name": "b", "edges": ["edge-b1"]},
        ],
        "fleet_devices": [{"id": "gw-a", "site": "a"}, {"id": "gw-b", "site": "b"}],
        "fleet_clients": [
            {"name": "control-room", "roles": ["operator"]},
            {"name": "fitter-a", "roles": ["operator"], "site": "a"},
        ],
    }
    data.update(fleet)
    return [
        RawHost(name, ("brokers",), {"ssh_hostname": f"192.0.2.{i + 10}", **data})
        for i, name in enumerate(BROKERS)
    ]


def problems_of(hosts: list[RawHost]) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        build_fleet(hosts)
    return [str(p) for p in caught.value.problems]


def test_devices_and_clients_are_held_only_by_their_sites_brokers_and_the_cores() -> None:
    fleet = build_fleet(sited())
    held = {b: fleet.users_of(b) for b in BROKERS}
    assert held["edge-a1"] == held["edge-a2"] == {"gw-a", "fitter-a"}
    assert held["edge-b1"] == {"gw-b"}
    # The cores hold every site's devices and the clients of no site.
    assert held["core-1"] == held["core-2"] == {"gw-a", "gw-b", "control-room", "fitter-a"}
    assert fleet.site_of_edge("edge-b1") == fleet.site("b")
    assert fleet.site_of_edge("core-1") is None
    assert fleet.cores_of(fleet.site("a")) == ["core-1", "core-2"]


def test_a_fleet_without_sites_keeps_every_device_on_every_broker() -> None:
    hosts = [
        RawHost(name, ("brokers",), {"fleet_name": "flat", "fleet_devices": [{"id": "gw-1"}]})
        for name in ("mqtt1", "mqtt2")
    ]
    fleet = build_fleet(hosts)
    assert fleet.sites == [] and fleet.core_brokers == []
    assert fleet.users_of("mqtt1") == fleet.users_of("mqtt2") == {"gw-1"}


def test_a_site_may_name_its_own_cores_in_failover_order() -> None:
    sites = [
        {"name": "a", "edges": ["edge-a1", "edge-a2"], "cores": ["core-2"]},
        {"name": "b", "edges": ["edge-b1"]},
    ]
    fleet = build_fleet(sited(fleet_sites=sites))
    assert fleet.cores_of(fleet.site("a")) == ["core-2"]
    assert "gw-a" not in fleet.users_of("core-1") and "gw-a" in fleet.users_of("core-2")


def test_every_topology_mistake_is_named_at_once() -> None:
    problems = problems_of(
        sited(
            fleet_sites=[
                # a core listed as an edge, an unknown broker, and a bridge loop (edge -> edge)
                {"name": "a", "edges": ["edge-a1", "core-1", "nope"], "cores": ["edge-b1"]},
                # an edge in two sites
                {"name": "b", "edges": ["edge-b1", "edge-a1"]},
                # a site with no edge
                {"name": "c", "edges": []},
            ],
            fleet_devices=[
                {"id": "gw-a", "site": "a"},
                {"id": "gw-x", "site": "x"},
                {"id": "gw-none"},
                {"id": "gw-b", "site": "b", "brokers": ["edge-a2"]},
            ],
            fleet_clients=[{"name": "c-x", "roles": ["operator"], "site": "x"}],
        )
    )
    assert problems == [
        "site a: edges: 'core-1' is a core broker (fleet_core_brokers): a broker is either an "
        "edge of one site or a core",
        "site a: edges: 'nope' is not a broker host",
        "site b: edges: 'edge-a1' is also an edge of site a: an edge serves one site",
        "site c: edges: a site needs at least one edge broker",
        "site a: cores: 'edge-b1' is an edge of site b: an edge bridging to an edge would "
        "loop; edges bridge to core brokers only",
        "host edge-a2: fleet_sites: neither an edge of a site nor in fleet_core_brokers: "
        "with sites, every broker is one or the other",
        "device gw-x: site: unknown site 'x' (a, b, c)",
        "device gw-none: site: required: this fleet has sites (a, b, c)",
        "device gw-b: brokers: 'edge-a2' is not one of site b's edges and cores",
        "client c-x: site: unknown site 'x' (a, b, c)",
    ]


def test_an_edge_without_a_core_is_refused() -> None:
    problems = problems_of(sited(fleet_core_brokers=[]))
    assert "site a: cores: edge-a1, edge-a2: an edge needs a core broker to bridge to " in (
        "\n".join(problems)
    )
    assert any(p.startswith("site b: cores: edge-b1: an edge needs a core") for p in problems)


def test_cores_without_sites_and_sites_unknown_to_the_inventory_are_refused() -> None:
    hosts = [
        RawHost(
            "mqtt1",
            ("brokers",),
            {
                "fleet_name": "flat",
                "fleet_core_brokers": ["mqtt1"],
                "fleet_devices": [{"id": "gw-1", "site": "a"}],
            },
        )
    ]
    assert problems_of(hosts) == [
        "inventory: fleet_core_brokers: core brokers without fleet_sites: list the sites and "
        "their edges",
        "device gw-1: site: unknown site 'a' (the inventory declares no fleet_sites)",
    ]


def test_a_core_needs_a_certificate_listener_for_the_bridges() -> None:
    hosts = sited()
    hosts[0] = RawHost(
        "core-1",
        ("brokers",),
        {**hosts[0].data, "mosquitto_listeners": [{"port": 8884, "auth": "password"}]},
    )
    assert problems_of(hosts) == [
        "host core-1: mosquitto_listeners: a core broker needs a TLS listener with auth: "
        "certificate for the bridges of its edges"
    ]


def _core_1_with(listeners: list[dict[str, Any]], ssh_hostname: str | None = None) -> list[RawHost]:
    hosts = sited()
    data = {**hosts[0].data, "mosquitto_listeners": listeners}
    if ssh_hostname is not None:
        data["ssh_hostname"] = ssh_hostname
    hosts[0] = RawHost("core-1", ("brokers",), data)
    return hosts


def test_a_core_whose_bridge_listener_binds_loopback_only_is_refused_for_remote_edges() -> None:
    loopback = [{"port": 8883, "bind_address": "127.0.0.1"}]
    assert problems_of(_core_1_with(loopback)) == [
        "host core-1: mosquitto_listeners: the bridges' listener (port 8883, auth: "
        "certificate) binds loopback only (127.0.0.1): edge(s) edge-a1, edge-a2, edge-b1 on "
        "other hosts could never reach it; bind it to an address the edges reach, or leave "
        "bind_address out"
    ]


def test_a_loopback_bridge_listener_is_refused_only_for_the_sites_that_bridge_to_that_core() -> (
    None
):
    hosts = _core_1_with([{"port": 8883, "bind_address": "::1"}])
    sites = [
        {"name": "a", "edges": ["edge-a1", "edge-a2"], "cores": ["core-2"]},
        {"name": "b", "edges": ["edge-b1"]},
    ]
    hosts = [RawHost(h.name, h.groups, {**h.data, "fleet_sites": sites}) for h in hosts]
    problems = problems_of(hosts)
    assert len(problems) == 1 and "edge(s) edge-b1 on other hosts" in problems[0], problems


def test_a_reachable_certificate_listener_beside_a_loopback_one_takes_the_bridges() -> None:
    listeners = [
        {"port": 8883, "bind_address": "127.0.0.1"},
        {"port": 8885, "auth": "certificate"},
    ]
    fleet = build_fleet(_core_1_with(listeners))
    assert bridge_listener_port(fleet.broker("core-1")) == 8885


def test_a_loopback_bridge_listener_is_fine_when_every_edge_is_the_same_machine() -> None:
    hosts = [
        RawHost(
            name,
            ("brokers",),
            {
                "ssh_hostname": "127.0.0.1",
                "ssh_port": port,  # one machine, brokers behind different SSH ports
                "fleet_name": "one-box",
                "fleet_core_brokers": ["core"],
                "fleet_sites": [{"name": "a", "edges": ["edge"]}],
                "fleet_devices": [{"id": "gw-a", "site": "a"}],
                "mosquitto_listeners": [{"port": port + 8000, "bind_address": "127.0.0.1"}],
            },
        )
        for name, port in (("core", 2201), ("edge", 2202))
    ]
    assert bridge_listener_port(build_fleet(hosts).broker("core")) == 10201


def test_a_site_name_must_be_a_safe_name() -> None:
    problems = problems_of(sited(fleet_sites=[{"name": "a/b", "edges": ["edge-a1"]}]))
    assert problems[0].startswith("site a/b: name: 'a/b' is not a valid identity"), problems


def test_iotfleet_keys_lists_the_site_keys_with_their_defaults() -> None:
    docs = {doc.key: doc for doc in inventory_keys()}
    assert {"fleet_sites", "fleet_core_brokers"} <= set(docs)
    assert docs["fleet_sites[].edges"].default == "required"
    assert docs["fleet_sites[].cores"].default == "-"
    assert docs["fleet_devices[].site"].description
    assert docs["fleet_clients[].site"].description


def test_a_gateway_lists_its_sites_edges_then_its_cores() -> None:
    station = RawHost("@local", ("flash_stations",), {})
    fleet = build_fleet([*sited(), station])
    gw_a, gw_b = fleet.device("gw-a"), fleet.device("gw-b")
    [local] = fleet.stations
    assert gateway_broker_names(fleet, local, gw_a) == ["edge-a1", "edge-a2", "core-1", "core-2"]
    assert gateway_broker_names(fleet, local, gw_b) == ["edge-b1", "core-1", "core-2"]


def test_a_stations_broker_list_keeps_only_the_brokers_holding_the_device() -> None:
    station = RawHost("@local", ("flash_stations",), {"espgw_brokers": ["edge-b1", "core-2"]})
    fleet = build_fleet([*sited(), station])
    [local] = fleet.stations
    assert gateway_broker_names(fleet, local, fleet.device("gw-a")) == ["core-2"]
    assert gateway_broker_names(fleet, local, fleet.device("gw-b")) == ["edge-b1", "core-2"]


def test_without_sites_a_gateway_lists_what_it_listed_before() -> None:
    hosts = [
        RawHost("mqtt1", ("brokers",), {"fleet_name": "flat", "fleet_devices": [{"id": "gw-1"}]}),
        RawHost("@local", ("flash_stations",), {}),
    ]
    fleet = build_fleet(hosts)
    assert gateway_broker_names(fleet, fleet.stations[0], fleet.device("gw-1")) is None
