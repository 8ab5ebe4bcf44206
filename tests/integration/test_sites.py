"""A multi-site fleet on a lab of its own (issue 15): 2 sites x 2 edge brokers + 2 core brokers.

The topology is declared with ``--data`` on the real ``pyinfra`` CLI (the lab's group_data
stays as it is); clients use real TLS against the lab's hosts. Telemetry of site a's device
crosses its edge's bridge to a consumer on the core, a command from the core reaches only
that device, a device of site a cannot read site b's topics at the core, each edge of a site
bridges on its own, traffic continues
through the second core when the first stops, a gateway of site a moves to the site's second
edge when its first edge stops (and back when it starts again), and revoking site b's bridge
cuts b off at the cores: the stolen bridge identity is refused there. Restoring the bridge
brings b back; a rollout after each converged one changes nothing.

Every test runs on bookworm and on trixie, each suite on a lab of its own. The gateway is the
lab's emulated ESP8266 board, flashed by the rollout with the real esptool; the gateway
simulator boots from its flash on the control machine and dials the brokers its image lists.
"""

from __future__ import annotations

import json
import time

import pytest

from iotfleet.check.mqtt_probe import Identity, try_connect
from iotfleet.model.own_identities import bridge_identity_name
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabHost
from tests.support.broker_clients import target
from tests.support.sites_lab import BRIDGE_TIMEOUT, PORT, SitesLab, crosses
from tests.support.waiting import wait_until

pytestmark = pytest.mark.lab


def test_only_edges_keep_a_bridge_identity(sites: SitesLab) -> None:
    for edge in sites.edges:
        modes = sites.lab.ssh(
            edge, f"stat -c '%U:%G %a' {layout.BRIDGE_CERT} {layout.BRIDGE_KEY}"
        ).stdout.split("\n")
        assert modes[:2] == ["root:mosquitto 640", "root:mosquitto 640"], edge.name
        conf = sites.lab.ssh(edge, f"grep '^connection ' {layout.CONFIG}").stdout
        assert conf.strip() == f"connection {bridge_identity_name(edge.fqdn)}"
    for core in (sites.core_1, sites.core_2):
        gone = sites.lab.ssh(core, f"ls {layout.BRIDGE_KEY}", check=False)
        assert gone.returncode != 0, f"{core.name} keeps a bridge key"


@pytest.mark.parametrize(
    ("edge", "topic"),
    [
        ("edge_a", "devices/sensor-a/telemetry/temp"),
        ("edge_a2", "devices/sensor-a/telemetry/second-edge"),  # each edge bridges on its own
    ],
)
def test_telemetry_of_site_a_reaches_a_consumer_on_the_core(
    sites: SitesLab, edge: str, topic: str
) -> None:
    _wait_for_telemetry_to_cross(sites, getattr(sites, edge), topic)


def _wait_for_telemetry_to_cross(sites: SitesLab, edge: LabHost, topic: str) -> None:
    with (
        sites.connect(sites.core_1, "ops") as consumer,
        sites.connect(edge, "sensor-a") as device,
    ):
        assert consumer.subscribe("devices/+/telemetry/#") == 1

        def telemetry_crossed() -> bool:
            """sensor-a's telemetry at the edge reached the consumer on core-1"""
            return crosses(device, consumer, topic)

        wait_until(telemetry_crossed, timeout=BRIDGE_TIMEOUT, poll=1)


def test_a_command_from_the_core_reaches_only_that_device(sites: SitesLab) -> None:
    with (
        sites.connect(sites.core_1, "ops") as operator,
        sites.connect(sites.edge_a, "sensor-a") as device_a,
        sites.connect(sites.edge_b, "sensor-b") as device_b,
    ):
        assert device_a.subscribe("devices/sensor-a/commands/#") == 1
        assert device_b.subscribe("devices/sensor-b/commands/#") == 1
        # sensor-b tries for sensor-a's commands at its own edge too: its ACL says no.
        device_b.subscribe("devices/sensor-a/commands/#")
        device_b.subscribe("devices/+/commands/#")

        def command_arrived() -> bool:
            """a command published at core-1 for sensor-a reached it at edge a"""
            return crosses(operator, device_a, "devices/sensor-a/commands/reboot")

        wait_until(command_arrived, timeout=BRIDGE_TIMEOUT, poll=1)

        def marker_arrived() -> bool:
            """a later command for sensor-b reached it at edge b"""
            return crosses(operator, device_b, "devices/sensor-b/commands/marker")

        # Sent after sensor-a's commands: once it is in, anything else would be in too.
        wait_until(marker_arrived, timeout=BRIDGE_TIMEOUT, poll=1)
        assert {m.topic for m in device_b.messages()} == {"devices/sensor-b/commands/marker"}


def test_a_device_of_site_a_cannot_read_site_b_at_the_core(sites: SitesLab) -> None:
    with (
        sites.connect(sites.core_1, "sensor-a") as spy,
        sites.connect(sites.core_1, "ops") as operator,
        sites.connect(sites.edge_b, "sensor-b") as device_b,
    ):
        for topic in (
            "devices/sensor-b/telemetry/#",
            "devices/sensor-b/status",
            "devices/+/telemetry/#",
        ):
            spy.subscribe(topic)
        assert spy.subscribe("devices/sensor-a/commands/#") == 1
        assert operator.subscribe("devices/sensor-b/telemetry/#") == 1

        def b_crossed() -> bool:
            """sensor-b's telemetry at edge b reached the operator on core-1"""
            return crosses(device_b, operator, "devices/sensor-b/telemetry/temp")

        wait_until(b_crossed, timeout=BRIDGE_TIMEOUT, poll=1)

        def marker_arrived() -> bool:
            """a command for sensor-a (which the spy may read) reached the spy"""
            return crosses(operator, spy, "devices/sensor-a/commands/marker")

        wait_until(marker_arrived, timeout=30, poll=1)
        assert {m.topic for m in spy.messages()} == {"devices/sensor-a/commands/marker"}


def test_traffic_continues_through_the_other_core_when_one_stops(sites: SitesLab) -> None:
    topic = "devices/sensor-a/telemetry/failover"
    sites.lab.ssh(sites.core_1, "systemctl stop mosquitto")
    try:
        with (
            sites.connect(sites.core_2, "ops") as consumer,
            sites.connect(sites.edge_a, "sensor-a") as device,
        ):
            assert consumer.subscribe("devices/sensor-a/telemetry/#") == 1

            def through_core_2() -> bool:
                """with core-1 stopped, sensor-a's telemetry reached the consumer on core-2"""
                return crosses(device, consumer, topic)

            started = time.monotonic()
            wait_until(through_core_2, timeout=BRIDGE_TIMEOUT, poll=1)
            print(f"\nbridge of edge a through core-2 after {time.monotonic() - started:.0f} s")
    finally:
        sites.lab.ssh(sites.core_1, "systemctl start mosquitto")


def test_a_stopped_edge_sends_its_gateways_to_the_other_edge_and_back(sites: SitesLab) -> None:
    name = sites.gateway_names[0]
    # Looks at the preferred edge every 2 s instead of the firmware's 60 s: no long waits here.
    gateway = sites.gateway(name, return_interval=2.0)
    order = [sites.edge_a, sites.edge_a2, sites.core_1, sites.core_2]
    # Its image: site a's edges, then the cores, in order.
    assert [sites.host(host).name for host, _ in gateway.targets] == [h.name for h in order]
    first, second = gateway.targets[0], gateway.targets[1]
    topics = gateway.topics
    with sites.connect(sites.core_1, "ops") as consumer:
        assert consumer.subscribe(f"{topics.telemetry}/#") == 1

        def reading_after(seq: int) -> bool:
            """a reading of the gateway newer than the move reached core-1"""
            readings = consumer.messages(f"{topics.telemetry}/state")
            return any(json.loads(m.payload).get("seq", 0) > seq for m in readings)

        gateway.start()
        try:
            assert gateway.wait_connected(60), gateway.stats.last_error
            assert gateway.broker == first
            sites.lab.ssh(sites.edge_a, "systemctl stop mosquitto")
            try:
                wait_until(lambda: gateway.broker == second, timeout=60)
                moved_at = gateway.stats.telemetry_sent
                # Edge a is down: whatever reaches the core now came through edge a2's bridge.
                wait_until(lambda: reading_after(moved_at), timeout=BRIDGE_TIMEOUT, poll=1)
                assert gateway.stats.moves_back == 0
            finally:
                sites.lab.ssh(sites.edge_a, "systemctl start mosquitto")
            wait_until(lambda: gateway.broker == first, timeout=60)
            back_at = gateway.stats.telemetry_sent
            assert gateway.stats.moves_back == 1
            # Back on edge a: its readings cross edge a's bridge again.
            wait_until(lambda: reading_after(back_at), timeout=BRIDGE_TIMEOUT, poll=1)
            assert gateway.broker == first
        finally:
            gateway.stop()


def test_revoking_a_sites_bridge_cuts_it_off_at_the_core(sites: SitesLab) -> None:
    # What an attacker who took edge b would hold: its bridge identity's certificate and key.
    stolen = Identity(
        sites.lab.ssh(sites.edge_b, f"cat {layout.BRIDGE_CERT}").stdout.encode(),
        sites.lab.ssh(sites.edge_b, f"cat {layout.BRIDGE_KEY}").stdout.encode(),
    )
    assert sites.ctx is not None
    # The control: it is the bridge identity the PKI issued (a login with it now would take
    # the live bridge's session over: username_as_clientid).
    bridge_b = bridge_identity_name(sites.edge_b.fqdn)
    assert stolen.certificate_pem == sites.ctx.pki.certificate_pem(bridge_b)
    seconds = sites.converge(b_revoked=True)
    print(f"\nrollout revoking site b's bridge: {seconds:.0f} s")
    assert sites.ctx is not None
    for core_host in (sites.core_1, sites.core_2):
        refused = try_connect(target(sites.ctx, core_host.address, PORT), stolen)
        assert not refused.accepted and refused.stage == "tls", (core_host.name, refused)
        acl = sites.lab.ssh(core_host, f"cat {layout.ACL_FILE}").stdout
        assert bridge_b not in acl
        assert bridge_identity_name(sites.edge_b2.fqdn) not in acl
        assert bridge_identity_name(sites.edge_a.fqdn) in acl
    # Site b's edges no longer bridge and keep no bridge identity; they still serve b.
    for edge in (sites.edge_b, sites.edge_b2):
        bridges = sites.lab.ssh(edge, f"grep -c '^connection ' {layout.CONFIG}", check=False)
        assert bridges.stdout.strip() == "0", bridges
        assert sites.lab.ssh(edge, f"ls {layout.BRIDGE_KEY}", check=False).returncode != 0
    edge_b = target(sites.ctx, sites.edge_b.address, PORT)
    assert try_connect(edge_b, sites.identity("sensor-b")).accepted
    # Site a is not affected.
    _wait_for_telemetry_to_cross(sites, sites.edge_a, "devices/sensor-a/telemetry/temp")

    # Restored: a new bridge identity for edge b, and b's telemetry crosses again.
    seconds = sites.converge()
    print(f"\nrollout restoring site b's bridge: {seconds:.0f} s")
    assert not try_connect(target(sites.ctx, sites.core_1.address, PORT), stolen).accepted
    assert sites.ctx.pki.certificate_pem(bridge_b) != stolen.certificate_pem
    with (
        sites.connect(sites.core_1, "ops") as consumer,
        sites.connect(sites.edge_b, "sensor-b") as device,
    ):
        assert consumer.subscribe("devices/sensor-b/telemetry/#") == 1

        def b_back() -> bool:
            """sensor-b's telemetry reached core-1 through edge b's new bridge"""
            return crosses(device, consumer, "devices/sensor-b/telemetry/back")

        wait_until(b_back, timeout=BRIDGE_TIMEOUT, poll=1)
