"""A core and an edge broker on loopback, run by real Mosquitto with the rendered files.

The files are what the rollout renders (``service_files``, the PKI files, the bridge identity)
with real certificates from a temporary fleet PKI; clients use real TLS (paho-mqtt). A device
on the edge reaches a consumer on the core through the bridge, a command at the core reaches
the device, nothing of another site crosses, and revoking the site's bridge identity cuts the
site off at the core. tests/integration/test_sites.py repeats this on the lab's hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotfleet.check.identities import choose_cast
from iotfleet.check.mqtt_checks import BrokerProber
from iotfleet.check.mqtt_probe import (
    NOT_AUTHORIZED,
    Identity,
    Session,
    Target,
    session,
    succeeded,
    try_connect,
)
from iotfleet.check.plan import ListenerTarget, plan_for
from iotfleet.check.tls_context import client_context
from iotfleet.device.contract import certificate_topic, csr_topic
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model import Fleet, RawHost, build_fleet
from iotfleet.model.own_identities import DELIVERY_IDENTITY, bridge_identity_name
from iotfleet.roles.mosquitto.render import service_files
from iotfleet.roles.pki import bridge_pki_files, broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto
from tests.support.waiting import wait_until

PASSPHRASE = "unit-test-passphrase-0123"
BRIDGE = bridge_identity_name("edge-a1")
BRIDGE_STATE = f"$SYS/broker/connection/{BRIDGE}/state"
# What Mosquitto 2.0 logs when a client certificate fails verification (revoked here).
TLS_REFUSED = "certificate verify failed"


def sites_fleet(ports: dict[str, int], *, bridge_revoked: str | None = None) -> Fleet:
    """Site a (edge-a1), site b (edge-b1, never started), the cores among ``ports`` (core-1,
    core-2: failover order); every broker on loopback."""
    fleet_data: dict[str, Any] = {
        "fleet_name": "sites",
        "fleet_core_brokers": sorted(name for name in ports if name.startswith("core-")),
        "fleet_sites": [
            {"name": "a", "edges": ["edge-a1"], "bridge_revoked": bridge_revoked},
            {"name": "b", "edges": ["edge-b1"]},
        ],
        "fleet_devices": [{"id": "gw-a", "site": "a"}, {"id": "gw-b", "site": "b"}],
        "fleet_clients": [
            {"name": "control-room", "roles": ["operator"]},
            {"name": "ops-a", "roles": ["admin"], "site": "a"},
        ],
        "mosquitto_ip_addresses": ["127.0.0.1"],
    }
    hosts = [
        RawHost(
            name,
            ("brokers",),
            {
                **fleet_data,
                "ssh_hostname": "127.0.0.1",
                "ssh_port": 2200 + index,  # one loopback, three "machines"
                "mosquitto_listeners": [{"port": ports[name], "bind_address": "127.0.0.1"}],
            },
        )
        for index, name in enumerate(ports)
    ]
    return build_fleet(hosts)


@dataclass
class Sites:
    ctx: FleetContext
    ports: dict[str, int]
    logs: dict[str, Path]

    def target(self, broker: str) -> Target:
        return Target("127.0.0.1", self.ports[broker], self.ctx.pki.ca_chain_pem())

    def identity(self, name: str) -> Identity:
        return Identity(self.ctx.pki.certificate_pem(name), self.ctx.pki.private_key_pem(name))

    def connect(self, broker: str, name: str) -> AbstractContextManager[Session]:
        return session(self.target(broker), self.identity(name))


@contextmanager
def running_broker(
    ctx: FleetContext,
    name: str,
    work: Path,
    edit: Callable[[str], str] | None = None,
    port: int | None = None,
) -> Iterator[Path]:
    """One broker with its rendered files (and, on an edge, its bridge identity); ``edit``
    changes its mosquitto.conf first, ``port`` moves its (single) listener."""
    broker = ctx.fleet.broker(name)
    config, files = service_files(ctx, broker)
    pki_files = broker_pki_files(ctx.pki, name)
    if ctx.fleet.site_of_edge(name) is not None:
        pki_files += bridge_pki_files(ctx.pki, name)
    paths: dict[str, str] = {}
    for managed in [*pki_files, *files]:
        local = work / managed.staged_name
        local.write_bytes(managed.content)
        paths[managed.path] = str(local)
    ports = [listener.port for listener in broker.mosquitto.listeners]
    text = config.text(paths)
    if edit is not None:
        text = edit(text)
    if port is not None:
        (old,) = ports
        text, ports = text.replace(f"\nlistener {old} ", f"\nlistener {port} "), [port]
    with running_mosquitto(text, work, ports) as log:
        yield log


def bridge_state(ops: Session) -> bytes | None:
    """The edge's own notification of its bridge: b"1" connected, b"0" not."""
    states = ops.messages(BRIDGE_STATE)
    return bytes(states[-1].payload) if states else None


def planned(cores: int = 1) -> FleetContext:
    """A fleet on fresh loopback ports with its PKI reconciled (in ``$IOTFLEET_HOME``)."""
    names = [*(f"core-{i}" for i in range(1, cores + 1)), "edge-a1", "edge-b1"]
    return reconciled(sites_fleet({name: free_port() for name in names}))


def reconciled(fleet: Fleet) -> FleetContext:
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    return ctx


def ports_of(fleet: Fleet) -> dict[str, int]:
    return {b.name: b.mosquitto.listeners[0].port for b in fleet.brokers}


def wait_for_bridge(sites: Sites, state: bytes = b"1") -> None:
    with sites.connect("edge-a1", "ops-a") as ops:
        ops.subscribe(BRIDGE_STATE)
        wait_until(lambda: bridge_state(ops) == state, timeout=60)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    mp = pytest.MonkeyPatch()
    mp.setenv("IOTFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    mp.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    ctx = planned()
    with ExitStack() as stack:
        logs = {}
        for name in ("core-1", "edge-a1"):
            work = tmp_path_factory.mktemp(name)
            logs[name] = stack.enter_context(running_broker(ctx, name, work))
        running = Sites(ctx, ports_of(ctx.fleet), logs)
        wait_for_bridge(running)
        yield running
    mp.undo()


def test_telemetry_and_status_from_a_device_on_the_edge_reach_the_core(sites: Sites) -> None:
    with (
        sites.connect("core-1", "control-room") as consumer,
        sites.connect("edge-a1", "gw-a") as device,
    ):
        assert consumer.subscribe("devices/+/telemetry/#") == 1
        assert consumer.subscribe("devices/+/status") == 1
        assert succeeded(device.publish("devices/gw-a/telemetry/temp", b"21.5"))
        assert succeeded(device.publish("devices/gw-a/status", b"online"))

        def arrived() -> bool:
            """the device's telemetry and status arrived at the core"""
            topics = {(m.topic, m.payload) for m in consumer.messages()}
            return {
                ("devices/gw-a/telemetry/temp", b"21.5"),
                ("devices/gw-a/status", b"online"),
            } <= topics

        wait_until(arrived)
        # QoS 1 end to end: the bridge publishes at QoS 1, the consumer subscribed at 1.
        assert {m.qos for m in consumer.messages("devices/gw-a/")} == {1}


def test_a_command_at_the_core_reaches_the_device_on_the_edge_and_nothing_else_crosses(
    sites: Sites,
) -> None:
    with (
        sites.connect("core-1", "control-room") as operator,
        sites.connect("edge-a1", "gw-a") as device,
        sites.connect("edge-a1", "ops-a") as admin,
    ):
        assert device.subscribe("devices/gw-a/commands/#") == 1
        # The edge's admin sees everything that reaches the edge.
        assert admin.subscribe("devices/#") == 1
        # Site b's device, a topic no device owns: neither may cross to site a's edge.
        assert succeeded(operator.publish("devices/gw-b/commands/reboot", b"b"))
        assert operator.publish("elsewhere/commands/x", b"x") == NOT_AUTHORIZED
        assert succeeded(operator.publish("devices/gw-a/commands/reboot", b"a"))
        wait_until(lambda: bool(device.messages("devices/gw-a/commands/reboot")))
        wait_until(lambda: bool(admin.messages("devices/gw-a/commands/reboot")))
        # Published before the one that arrived, over the same core: it would be there by now.
        assert {m.topic for m in admin.messages()} == {"devices/gw-a/commands/reboot"}


def test_a_device_cannot_read_another_sites_topics_at_the_core(sites: Sites) -> None:
    with (
        sites.connect("core-1", "gw-a") as spy,
        sites.connect("core-1", "gw-b") as other,
        sites.connect("core-1", "control-room") as operator,
    ):
        for topic in ("devices/gw-b/telemetry/#", "devices/gw-b/status", "devices/+/commands/#"):
            spy.subscribe(topic)
        assert operator.subscribe("devices/gw-b/telemetry/#") == 1
        assert spy.subscribe("devices/gw-a/commands/#") == 1
        assert succeeded(other.publish("devices/gw-b/telemetry/temp", b"7"))
        assert spy.publish("devices/gw-b/telemetry/temp", b"forged") == NOT_AUTHORIZED
        wait_until(lambda: bool(operator.messages("devices/gw-b/telemetry/temp")))
        # A marker the spy may read, sent after site b's telemetry: once it is in, anything
        # the core would have given the spy is in too.
        assert succeeded(operator.publish("devices/gw-a/commands/marker"))
        wait_until(lambda: bool(spy.messages("devices/gw-a/commands/marker")))
        assert {m.topic for m in spy.messages()} == {"devices/gw-a/commands/marker"}


def _strangers_attempts(stranger: Session) -> list[int]:
    """What a device of site b tries on site a's edge under its own name (what the ACL's
    patterns give any name): reason codes of its publishes and subscriptions."""
    return [
        stranger.publish("devices/gw-b/telemetry/temp"),
        stranger.publish("devices/gw-b/status"),
        stranger.publish(csr_topic("gw-b")),
        stranger.subscribe("devices/gw-b/commands/#"),
        stranger.subscribe(certificate_topic("gw-b")),
    ]


def test_a_device_of_another_site_may_do_nothing_on_this_sites_edge(sites: Sites) -> None:
    """Its certificate is the fleet's, so TLS lets it in; the edge's plugin does not hold its
    name (identities_file), so the ACL's patterns never apply to it."""
    with sites.connect("edge-a1", "gw-b") as stranger, sites.connect("edge-a1", "gw-a") as own:
        assert _strangers_attempts(stranger) == [NOT_AUTHORIZED] * 5
        assert succeeded(own.publish("devices/gw-b/telemetry/temp")) is False
        assert succeeded(own.publish("devices/gw-a/telemetry/temp"))


def test_a_client_gets_nothing_from_the_device_patterns(sites: Sites) -> None:
    """The patterns apply to every user: a client named X would get devices/X/... and X's
    certificate topics; its block denies them (Mosquitto checks a user's denials first)."""
    with sites.connect("core-1", "control-room") as operator:
        assert operator.publish("devices/control-room/telemetry/temp") == NOT_AUTHORIZED
        assert operator.publish("devices/control-room/status") == NOT_AUTHORIZED
        assert operator.publish(csr_topic("control-room")) == NOT_AUTHORIZED
        # What its role grants still works.
        assert succeeded(operator.publish("devices/gw-a/commands/ping"))


def test_a_client_reads_nothing_on_its_namesakes_certificate_topic(sites: Sites) -> None:
    """Mosquitto 2.0 acknowledges the subscription (the pattern matches it; denials apply to
    each message), but a retained message there never reaches the client."""
    topic = certificate_topic("control-room")
    with sites.connect("core-1", DELIVERY_IDENTITY) as delivery:
        assert succeeded(delivery.publish(topic, b"planted", retain=True))
    try:
        with (
            sites.connect("core-1", "control-room") as operator,
            sites.connect("core-1", "gw-a") as device,
        ):
            operator.subscribe(topic)
            operator.subscribe("devices/gw-a/status")
            # Sent after the retained one was due: once it is in, the other would be too.
            assert succeeded(device.publish("devices/gw-a/status", b"marker"))
            wait_until(lambda: bool(operator.messages("devices/gw-a/status")))
            assert operator.messages(topic) == []
    finally:
        with sites.connect("core-1", DELIVERY_IDENTITY) as delivery:
            delivery.publish(topic, b"", retain=True)


def test_without_the_identities_file_the_patterns_would_let_the_stranger_in(
    sites: Sites, tmp_path: Path
) -> None:
    """The attack above is real: the same edge without ``plugin_opt_identities_file`` (and
    without its bridge, which would take the live one's session at the core) gives the device
    of site b its own topics."""

    def weakened(text: str) -> str:
        kept = [line for line in text.split("\n") if "plugin_opt_identities_file" not in line]
        return "\n".join(kept).split("\nconnection ")[0] + "\n"

    port = free_port()
    with running_broker(sites.ctx, "edge-a1", tmp_path, edit=weakened, port=port):
        target = Target("127.0.0.1", port, sites.ctx.pki.ca_chain_pem())
        with session(target, sites.identity("gw-b")) as stranger:
            codes = _strangers_attempts(stranger)
    assert all(code < 0x80 for code in codes), codes


def _edge_matrix(sites: Sites, port: int) -> list[str]:
    """The compliance suite's factor matrix on edge-a1's certificate listener at ``port``."""
    target = plan_for(sites.ctx.fleet, {}).broker("edge-a1")
    listener = target.listeners[0]
    at_port = listener.listener.model_copy(update={"port": port})
    moved = ListenerTarget(listener.broker, listener.connect_name, at_port)
    cast = choose_cast(sites.ctx.fleet, sites.ctx.pki, set(sites.ctx.passwords))
    return BrokerProber(sites.ctx, target, cast, timeout=3).factor_matrix(moved)


def test_the_factor_matrix_counts_strangers_on_an_edge_as_refused(sites: Sites) -> None:
    """A client of the cores only (the matrix's stranger here) completes TLS on site a's edge
    (its certificate listener asks no plugin) but may do nothing there: the matrix passes."""
    assert _edge_matrix(sites, sites.ports["edge-a1"]) == []


def test_the_factor_matrix_names_a_stranger_that_gets_something(
    sites: Sites, tmp_path: Path
) -> None:
    """The same edge without ``plugin_opt_identities_file``: the device patterns give the
    client of the cores its namesake's topics there, and the matrix says it gets in."""

    def weakened(text: str) -> str:
        kept = [line for line in text.split("\n") if "plugin_opt_identities_file" not in line]
        return "\n".join(kept).split("\nconnection ")[0] + "\n"

    port = free_port()
    with running_broker(sites.ctx, "edge-a1", tmp_path, edit=weakened, port=port):
        problems = _edge_matrix(sites, port)
    assert any("control-room" in p and "gets in" in p for p in problems), problems


def test_revoking_the_bridge_identity_cuts_the_site_off_at_the_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    ctx = planned()
    ports = ports_of(ctx.fleet)
    for name in ("core-1", "edge-a1"):
        (tmp_path / name).mkdir()
    with running_broker(ctx, "edge-a1", tmp_path / "edge-a1") as edge_log:
        with running_broker(ctx, "core-1", tmp_path / "core-1") as core_log:
            sites = Sites(ctx, ports, {"core-1": core_log, "edge-a1": edge_log})
            wait_for_bridge(sites)
            # The bridge identity may carry site a's topics at the core and nothing else.
            bridge_identity = sites.identity(BRIDGE)  # the edge keeps using it
            with sites.connect("core-1", BRIDGE) as bridge:
                assert succeeded(bridge.publish("devices/gw-a/telemetry/x"))
                assert bridge.publish("devices/gw-b/telemetry/x") == NOT_AUTHORIZED
                assert bridge.publish("iotfleet/certs/gw-a", b"forged") == NOT_AUTHORIZED
        revoked = reconciled(sites_fleet(ports, bridge_revoked="keyCompromise"))
        # The core again, with the new CRL and ACL, as the rollout restarts it.
        with running_broker(revoked, "core-1", tmp_path / "core-1") as core_log:
            refused = try_connect(sites.target("core-1"), bridge_identity)
            assert not refused.accepted and refused.stage == "tls", refused

            def edge_retried() -> bool:
                """the edge's bridge tried the restarted core again and was refused too"""
                return core_log.read_text().count(TLS_REFUSED) >= 2

            wait_until(edge_retried, timeout=120)  # the bridge retries every 5..30 s
            wait_for_bridge(sites, b"0")
            # The site's devices are still served by their edge, cut off from the core.
            assert try_connect(sites.target("edge-a1"), sites.identity("gw-a")).accepted


def test_the_bridge_fails_over_to_the_second_core_when_the_first_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    ctx = planned(cores=2)
    sites = Sites(ctx, ports_of(ctx.fleet), {})
    for name in ("core-1", "core-2", "edge-a1"):
        (tmp_path / name).mkdir()
    with ExitStack() as rest, ExitStack() as first_core:
        # Both cores before the edge: its bridge starts on the first address, core-1.
        first_core.enter_context(running_broker(ctx, "core-1", tmp_path / "core-1"))
        rest.enter_context(running_broker(ctx, "core-2", tmp_path / "core-2"))
        edge_log = rest.enter_context(running_broker(ctx, "edge-a1", tmp_path / "edge-a1"))
        wait_for_bridge(sites)
        to_core_2 = f"({sites_address(sites, 'core-2')})"
        assert to_core_2 not in edge_log.read_text()
        first_core.close()
        # core-1 is gone: the bridge moves on to core-2, the next address of its list.
        wait_for_bridge(sites, b"0")
        wait_for_bridge(sites)
        assert to_core_2 in edge_log.read_text()
        with (
            sites.connect("core-2", "control-room") as consumer,
            sites.connect("edge-a1", "gw-a") as device,
        ):
            assert consumer.subscribe("devices/gw-a/telemetry/#") == 1
            assert succeeded(device.publish("devices/gw-a/telemetry/temp", b"after failover"))
            wait_until(lambda: bool(consumer.messages("devices/gw-a/telemetry/temp")))


def sites_address(sites: Sites, core: str) -> str:
    """How the edge's log names a core it connects to."""
    return f"127.0.0.1:{sites.ports[core]}"


@contextmanager
def persistent_consumer(sites: Sites, broker: str, received: list[bytes]) -> Iterator[mqtt.Client]:
    """``control-room`` with a persistent session (MQTT 3.1.1, clean session false): what the
    broker queues for it while it is away arrives when it comes back."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="control-room",
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    identity = sites.identity("control-room")
    client.tls_set_context(
        client_context(
            sites.ctx.pki.ca_chain_pem(),
            certificate_pem=identity.certificate_pem,
            private_key_pem=identity.private_key_pem,
        )
    )
    client.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
    client.connect("127.0.0.1", sites.ports[broker])
    client.loop_start()
    try:
        wait_until(client.is_connected)
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def test_qos1_telemetry_published_while_the_core_is_down_arrives_after_it_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edge queues for its bridge's persistent session (cleansession false, fixed client
    ids), the restarted core takes the queue over the bridge and keeps the consumer's."""
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    ctx = planned()
    sites = Sites(ctx, ports_of(ctx.fleet), {})
    for name in ("core-1", "edge-a1"):
        (tmp_path / name).mkdir()
    received: list[bytes] = []
    topic = "devices/gw-a/telemetry/temp"
    with running_broker(ctx, "edge-a1", tmp_path / "edge-a1"):
        with running_broker(ctx, "core-1", tmp_path / "core-1"):
            wait_for_bridge(sites)
            with (
                persistent_consumer(sites, "core-1", received) as consumer,
                sites.connect("edge-a1", "gw-a") as device,
            ):
                consumer.subscribe("devices/gw-a/telemetry/#", qos=1)
                # Through the bridge once: the consumer's subscription is in place.
                wait_until(
                    lambda: succeeded(device.publish(topic, b"before")) and b"before" in received
                )
        wait_for_bridge(sites, b"0")
        with sites.connect("edge-a1", "gw-a") as device:
            for n in range(3):
                assert succeeded(device.publish(topic, f"during outage {n}".encode()))
        # The core restarts with its persistence (the consumer's session among it).
        with (
            running_broker(ctx, "core-1", tmp_path / "core-1"),
            persistent_consumer(sites, "core-1", received),
        ):
            wanted = [f"during outage {n}".encode() for n in range(3)]
            wait_until(lambda: all(w in received for w in wanted), timeout=120)
