"""bench/sites.py's pure helpers: the topology it rolls out, where publishers go, percentiles."""

from __future__ import annotations

import math
import os

import pytest

from bench.sites import build_topology, cpu_percent, percentile

HOSTS = [f"h{n}.lab" for n in range(22)]


def test_topology_cores_first_then_sites_in_order() -> None:
    topo = build_topology(HOSTS, cores=2, sites=4, edges_per_site=5, devices=10_000)
    assert topo.cores == ["h0.lab", "h1.lab"]
    assert list(topo.sites) == ["s1", "s2", "s3", "s4"]
    assert topo.sites["s1"] == HOSTS[2:7] and topo.sites["s4"] == HOSTS[17:22]
    edges = [e for es in topo.sites.values() for e in es]
    assert len(set(edges)) == 20 and not set(edges) & set(topo.cores)
    assert len(topo.devices) == 10_000
    assert [sum(1 for s in topo.devices.values() if s == site) for site in topo.sites] == [2500] * 4


def test_topology_data_is_the_inventory_shape() -> None:
    data = build_topology(HOSTS, cores=2, sites=2, edges_per_site=1, devices=3).data()
    assert data == {
        "fleet_core_brokers": ["h0.lab", "h1.lab"],
        "fleet_sites": [{"name": "s1", "edges": ["h2.lab"]}, {"name": "s2", "edges": ["h3.lab"]}],
        "fleet_devices": [
            {"id": "bsites-00000", "site": "s1"},
            {"id": "bsites-00001", "site": "s2"},
            {"id": "bsites-00002", "site": "s1"},
        ],
    }


def test_topology_refuses_too_few_hosts_or_empty_sizes() -> None:
    with pytest.raises(ValueError, match="23 hosts needed, 22 given"):
        build_topology(HOSTS, cores=3, sites=4, edges_per_site=5, devices=10)
    with pytest.raises(ValueError, match="at least 1"):
        build_topology(HOSTS, cores=0, sites=1, edges_per_site=1, devices=1)


def test_placement_spreads_publishers_over_every_edge_of_their_own_site() -> None:
    topo = build_topology(HOSTS, cores=2, sites=4, edges_per_site=5, devices=10_000)
    placed = topo.placement(200)
    assert len({d for d, _ in placed}) == 200
    for device, edge in placed:
        assert edge in topo.sites[topo.devices[device]]
    per_edge = [sum(1 for _, e in placed if e == edge) for es in topo.sites.values() for edge in es]
    assert per_edge == [10] * 20


def test_placement_refuses_more_publishers_than_a_site_has_devices() -> None:
    topo = build_topology(HOSTS, cores=2, sites=2, edges_per_site=1, devices=4)
    with pytest.raises(ValueError, match="site s1 has only 2 devices"):
        topo.placement(5)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_cpu_percent_of_one_core() -> None:
    tck = os.sysconf("SC_CLK_TCK")
    assert cpu_percent(tck * 3, 6.0) == pytest.approx(50.0)
    assert cpu_percent(5, 0.0) == 0.0
