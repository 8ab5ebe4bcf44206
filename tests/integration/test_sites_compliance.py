"""The bridge checks of ``iotfleet check`` on the multi-site lab (issue 15, item 4).

The lab is the sites lab of ``test_sites.py`` (the session's ``sites`` fixture: 2 sites x 2
edges + 2 cores, rolled out with ``--data``, once per suite). The real ``iotfleet check`` CLI
passes on the healthy fleet; the breakages (a core ACL giving site a's bridge site b's devices,
a plain-text bridge, a bridge logging in with a device's certificate and key), each on a broker
of its own and applied together, make it fail naming each check and its host; a rollout
restores the hosts and a second rollout changes nothing. From outside, a device of
site a gets nothing of site b's topics at b's edge.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.model.own_identities import bridge_identity_name
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabHost
from tests.support.check_runs import CheckRun, run_check
from tests.support.sites_lab import SitesLab

pytestmark = pytest.mark.lab

EDGE_CHECKS = (
    "test_bridge_configured_as_the_inventory_derives",
    "test_bridge_logs_in_as_its_own_identity",
    "test_bridge_connected_to_a_core",
)
FACTOR_MATRIX = "test_only_the_identitys_own_factors_get_in"
CORE_CHECKS = (
    "test_core_acl_confines_each_bridge_to_its_site",
    "test_bridge_identity_cannot_reach_another_sites_topics",
)


def check(sites: SitesLab, reports: Path, *args: str) -> CheckRun:
    """``iotfleet check inventory/lab.py`` with the sites topology (``--data``, as rolled out)."""
    data = [a for k, v in sites.data().items() for a in ("--data", f"{k}={json.dumps(v)}")]
    return run_check(sites.lab.name, reports, *data, *args)


def test_the_healthy_sites_fleet_passes_the_whole_suite(sites: SitesLab, tmp_path: Path) -> None:
    """Every check of ``iotfleet check``, the bridge checks among them, on all six brokers.
    The factor matrix too: on an edge's certificate listener an identity of another site (or
    of the cores only) completes TLS with the fleet's certificate (Mosquitto asks no plugin
    there), and counts as refused because the edge lets it do nothing (``identities_file``)."""
    run = check(sites, tmp_path)
    assert run.returncode == 0, run.explain()
    matrix = run.outcomes(FACTOR_MATRIX)
    assert {h for h, o in matrix.items() if o == "passed"} >= {h.fqdn for h in sites.edges}, matrix
    edges = {h.fqdn for h in sites.edges}
    cores = {sites.core_1.fqdn, sites.core_2.fqdn}
    for name in EDGE_CHECKS:
        outcomes = run.outcomes(name)
        assert {h for h, o in outcomes.items() if o == "passed"} == edges, (name, outcomes)
        assert {h for h, o in outcomes.items() if o == "not applicable"} == cores, outcomes
    for name in CORE_CHECKS:
        outcomes = run.outcomes(name)
        assert {h for h, o in outcomes.items() if o == "passed"} == cores, (name, outcomes)
        assert {h for h, o in outcomes.items() if o == "not applicable"} == edges, outcomes


# -- breakages -------------------------------------------------------------------------------


def _write(sites: SitesLab, host: LabHost, path: str, content: bytes) -> None:
    data = base64.b64encode(content).decode()
    sites.lab.ssh(host, f"printf %s {data} | base64 -d > {shlex.quote(path)}")


def _edit(sites: SitesLab, host: LabHost, path: str, change: Callable[[str], str]) -> None:
    before = sites.lab.ssh(host, f"cat {shlex.quote(path)}").stdout
    after = change(before)
    assert after != before, f"the breakage did not change {path}"
    _write(sites, host, path, after.encode())


def _restart(sites: SitesLab, host: LabHost) -> None:
    sites.lab.ssh(host, "systemctl restart mosquitto && systemctl is-active -q mosquitto")


def break_core_acl(sites: SitesLab) -> LabHost:
    """core-1's ACL lets site a's bridge (edge a's identity) read and write site b's device."""
    bridge = bridge_identity_name(sites.edge_a.fqdn)
    _edit(
        sites,
        sites.core_1,
        layout.ACL_FILE,
        lambda acl: acl.replace(
            f"user {bridge}\n", f"user {bridge}\ntopic readwrite devices/sensor-b/#\n"
        ),
    )
    sites.lab.ssh(sites.core_1, "systemctl reload mosquitto")
    return sites.core_1


def break_plain_text_bridge(sites: SitesLab) -> LabHost:
    """edge a's bridge without TLS: no CA, certificate, key or TLS version."""
    tls = ("bridge_cafile ", "bridge_certfile ", "bridge_keyfile ", "bridge_tls_version ")
    _edit(
        sites,
        sites.edge_a,
        layout.CONFIG,
        lambda conf: "".join(
            line for line in conf.splitlines(keepends=True) if not line.startswith(tls)
        ),
    )
    _restart(sites, sites.edge_a)
    return sites.edge_a


def break_device_identity(sites: SitesLab) -> LabHost:
    """edge a2's bridge.pem/bridge.key replaced by device sensor-a's certificate and key."""
    assert sites.ctx is not None
    pki = sites.ctx.pki
    _write(sites, sites.edge_a2, layout.BRIDGE_CERT, pki.certificate_pem("sensor-a"))
    _write(sites, sites.edge_a2, layout.BRIDGE_KEY, pki.private_key_pem("sensor-a"))
    _restart(sites, sites.edge_a2)
    return sites.edge_a2


@dataclass(frozen=True)
class Breakage:
    name: str
    apply: Callable[[SitesLab], LabHost]
    # test function -> words its failure message must contain ({host} = the broken broker)
    expected: dict[str, list[str]]


BREAKAGES = [
    Breakage(
        "wrong ACL at the core",
        break_core_acl,
        {
            "test_core_acl_confines_each_bridge_to_its_site": [
                "readwrite devices/sensor-b/#: beyond its site's devices"
            ],
            "test_bridge_identity_cannot_reach_another_sites_topics": [
                "may publish devices/sensor-b/",
                "reads devices/sensor-b/telemetry/",
            ],
        },
    ),
    Breakage(
        "plain-text bridge",
        break_plain_text_bridge,
        {
            "test_bridge_configured_as_the_inventory_derives": [
                "is plain text: no bridge_cafile",
                "allows TLS below 1.2",
            ],
            "test_bridge_connected_to_a_core": ["is not connected"],
        },
    ),
    Breakage(
        "bridge with a device's identity",
        break_device_identity,
        {
            "test_bridge_logs_in_as_its_own_identity": [
                "is the certificate of 'sensor-a', not of the edge's bridge identity",
                f"{layout.BRIDGE_KEY} on {{host}} is not the key of",
            ],
        },
    ),
]


def limits(hosts: list[LabHost]) -> list[str]:
    return [arg for host in hosts for arg in ("--limit", host.fqdn)]


def test_each_broken_bridge_fails_its_check_until_a_rollout_restores_it(
    sites: SitesLab, tmp_path: Path
) -> None:
    """The breakages at once, each on a broker of its own (core-1, edge a, edge a2): one check
    run of the three names each failing check on its broker, one rollout restores all three
    and a second changes nothing, and the bridge checks pass on the three again."""
    broken_hosts: list[LabHost] = []
    try:
        for breakage in BREAKAGES:
            broken_hosts.append(breakage.apply(sites))
        assert len({h.fqdn for h in broken_hosts}) == len(BREAKAGES), broken_hosts
        run = check(sites, tmp_path / "broken", "-m", "bridges", *limits(broken_hosts))
        assert run.returncode == 1, run.explain()
        for breakage, host in zip(BREAKAGES, broken_hosts, strict=True):
            for name, phrases in breakage.expected.items():
                messages = run.messages(name, host.fqdn)
                assert messages, f"{name} did not fail on {host.fqdn}:\n{run.explain()}"
                for phrase in phrases:
                    words = phrase.format(host=host.fqdn)
                    assert any(words in m for m in messages), (words, messages)
                    assert words in run.output, f"the summary does not say {words!r}"
            assert f"✗ {host.fqdn}" in run.output
    finally:
        sites.converge()  # restores the hosts; a second rollout changes nothing
    repaired = check(sites, tmp_path / "repaired", "-m", "bridges", *limits(broken_hosts))
    assert repaired.returncode == 0, f"after the rollout:\n{repaired.explain()}"


def test_a_device_of_site_a_gets_nothing_of_site_b_at_bs_edge(sites: SitesLab) -> None:
    """Its certificate is the fleet's (TLS lets it in); b's edge has no ACL entry for it."""
    with (
        sites.connect(sites.edge_b, "sensor-a") as spy,
        sites.connect(sites.edge_b, "sensor-b") as device_b,
    ):
        for topic_filter in ("#", "devices/sensor-b/#"):
            spy.subscribe(topic_filter)
        assert spy.publish("devices/sensor-b/telemetry/forged") == 0x87
        assert device_b.publish("devices/sensor-b/telemetry/temp", b"7") < 0x80
        assert not spy.wait_for_message("devices/", timeout=2)
