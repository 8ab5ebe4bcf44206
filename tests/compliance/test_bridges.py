"""Bridges of a multi-site fleet: inside each edge (configuration, identity, state) and each
core (the ACL of the bridge identities), and from outside (a site's bridge at a core)."""

from __future__ import annotations

import time

import pytest

from iotfleet.check.bridge_attacks import cross_site_pair, cross_site_problems
from iotfleet.check.bridge_checks import (
    BridgeSample,
    bridge_config_problems,
    bridge_identity_problems,
    bridge_state_problems,
    core_acl_problems,
)
from iotfleet.check.results import NOT_APPLICABLE
from iotfleet.check.suite import Param, Suite, fail_on
from iotfleet.model.own_identities import (
    bridge_identity_name,
    bridge_state_topic,
    health_identity_name,
)
from iotfleet.model.topology import bridge_listener
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.bridge import edge_bridge

pytestmark = [pytest.mark.bridges]
# How long a bridge that is down may take to come back and stay before the state check fails
# (Mosquitto retries after 5 s, backing off up to 30 s, plus TLS).
BRIDGE_RECONNECT_SECONDS = 60
# How long the bridge's connection to a core must last, unbroken, to count as connected.
BRIDGE_STABLE_SECONDS = 10


def _sites_only(suite: Suite) -> None:
    if not suite.plan.fleet.sites:
        pytest.skip(f"{NOT_APPLICABLE}: the fleet has no sites (fleet_sites): no bridges")


def _edge_only(param: Param, suite: Suite, *, bridged: bool = False) -> None:
    _sites_only(suite)
    fleet = suite.plan.fleet
    site = fleet.site_of_edge(param.host)
    if site is None:
        pytest.skip(f"{NOT_APPLICABLE}: {param.host} is not an edge broker of a site")
    if bridged and site.bridge_revoked is not None:
        pytest.skip(
            f"{NOT_APPLICABLE}: site {site.name} is cut off from the cores (bridge_revoked): "
            f"{param.host} has no bridge"
        )


def _core_only(param: Param, suite: Suite) -> None:
    _sites_only(suite)
    if param.host not in suite.plan.fleet.core_brokers:
        pytest.skip(f"{NOT_APPLICABLE}: {param.host} is not a core broker of a multi-site fleet")


@pytest.mark.host
def test_bridge_configured_as_the_inventory_derives(broker: Param, suite: Suite) -> None:
    """The edge's bridge is TLS 1.2+ to its site's cores, as its own identity, carrying exactly
    its site's device topics (parsed from the running configuration)."""
    _edge_only(broker, suite)
    facts = suite.facts(broker.broker)
    texts = [facts.config_text, *facts.included_configs.values()]
    fail_on(bridge_config_problems(broker.host, suite.plan.fleet, *texts))


@pytest.mark.host
def test_bridge_logs_in_as_its_own_identity(broker: Param, suite: Suite) -> None:
    """The edge's bridge certificate and key are the PKI's bridge identity of this edge."""
    _edge_only(broker, suite, bridged=True)
    facts = suite.facts(broker.broker)
    name = bridge_identity_name(broker.host)
    pki = suite.ctx.pki
    fail_on(
        bridge_identity_problems(
            broker.host,
            pki.certificate_pem(name),
            pki.private_key_pem(name),
            facts.read_public(layout.BRIDGE_CERT),
            facts.sha256(layout.BRIDGE_KEY),
        )
    )


@pytest.mark.host
def test_bridge_connected_to_a_core(broker: Param, suite: Suite) -> None:
    """The edge's bridge is connected ($SYS/broker/connection/<bridge>/state = 1, read as its
    health identity), the broker holds a connection to one of its site's cores, and both are
    still so, on the same TCP connection, some seconds later (no bridge taking turns with
    another broker using the same identity)."""
    _edge_only(broker, suite, bridged=True)
    fleet = suite.plan.fleet
    bridge = edge_bridge(fleet, broker.host)
    assert bridge is not None
    listener = bridge_listener(broker.broker.model)
    if listener is None:
        fail_on(
            [
                f"{broker.host} has no TLS listener with auth: certificate: its health identity "
                "cannot read the bridge state"
            ]
        )
        return
    facts = suite.facts(broker.broker)
    cores = [f"{ip}:{port}" for host, port in bridge.addresses for ip in facts.addresses_of(host)]

    samples: list[BridgeSample] = []

    def problems() -> list[str]:
        state = facts.read_retained_as_health(
            listener.bind_address or "127.0.0.1",
            listener.port,
            bridge_state_topic(broker.host),
            health_identity_name(broker.host),
        )
        connections = tuple(facts.established_connections())
        samples.append(BridgeSample(time.monotonic(), state, connections))
        return bridge_state_problems(
            broker.host, bridge.connection, samples, cores, BRIDGE_STABLE_SECONDS
        )

    # A bridge that just lost its core (a core restarted, the attack check took its place at
    # the core) is back within Mosquitto's restart back-off: judge only what lasts. Connected
    # once is not enough: the same connection must still be there BRIDGE_STABLE_SECONDS later.
    found = problems()
    deadline = time.monotonic() + BRIDGE_RECONNECT_SECONDS
    while found and time.monotonic() < deadline:
        time.sleep(2)
        found = problems()
    fail_on(found)


@pytest.mark.host
def test_core_acl_confines_each_bridge_to_its_site(broker: Param, suite: Suite) -> None:
    """The core's ACL lets each bridge identity write its site's telemetry and status and read
    its commands, nothing else; no other bridge identity is granted."""
    _core_only(broker, suite)
    text = suite.facts(broker.broker).read_public(layout.ACL_FILE)
    if text is None:
        fail_on([f"{layout.ACL_FILE} is missing on {broker.host}"])
        return
    fail_on(core_acl_problems(broker.host, suite.plan.fleet, text.decode(errors="replace")))


@pytest.mark.outside
@pytest.mark.attack
def test_bridge_identity_cannot_reach_another_sites_topics(broker: Param, suite: Suite) -> None:
    """With one site's bridge identity, another site's topics at the core give nothing: no
    publish accepted, no message read."""
    _core_only(broker, suite)
    pair = cross_site_pair(suite.plan.fleet, broker.host)
    if isinstance(pair, str):
        pytest.skip(f"{NOT_APPLICABLE}: {pair}")
    fail_on(cross_site_problems(suite.ctx, broker.host, broker.broker.connect_name, pair))
