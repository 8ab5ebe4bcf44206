"""From outside, at a core broker: a site's bridge identity tries another site's topics.

The attacker is the real bridge identity of one site's first edge (the control machine holds
the fleet PKI); the victim is the next site bridging to the same core. The attacker subscribes
to ``#`` and to every topic of the victim's devices, and publishes to each of them (MQTT 5:
PUBACK 0x87 expected); the victim's own bridge identity then publishes a probe message on its
site's telemetry, so there is traffic the attacker must not get. With client id = username,
each login takes the bridge's place at the core once (the edge reconnects within seconds and
subscribes again): this check belongs to the ``attack`` group.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from iotfleet.check.mqtt_checks import PROBE_LEAF, PROBE_PAYLOAD, SETTLE_SECONDS, topic_matches
from iotfleet.check.mqtt_probe import Identity, ProbeError, Target, session, succeeded
from iotfleet.fleet.context import FleetContext
from iotfleet.model import Fleet, Site
from iotfleet.model.own_identities import bridge_identity_name
from iotfleet.model.topology import bridge_listener_port
from iotfleet.mosquitto.acl import site_rules


@dataclass(frozen=True)
class CrossSite:
    """Who attacks whom at one core."""

    attacker: str  # a bridge identity of ``attacker_site``
    attacker_site: Site
    victim: str  # a bridge identity of ``victim_site``
    victim_site: Site


def cross_site_pair(fleet: Fleet, core_name: str) -> CrossSite | str:
    """The attacker and victim at ``core_name``, or why there are none (not applicable)."""
    if core_name not in fleet.core_brokers:
        return f"{core_name} is not a core broker of a multi-site fleet"
    sites = [
        s
        for s in fleet.sites
        if core_name in fleet.cores_of(s) and s.bridge_revoked is None and s.edges
    ]
    with_devices = [s for s in sites if site_rules(fleet, s)]
    if len(sites) < 2 or not with_devices:
        return f"fewer than two sites with devices bridge to {core_name}"
    victim = with_devices[-1]
    attacker = next(s for s in sites if s is not victim)
    return CrossSite(
        bridge_identity_name(attacker.edges[0]),
        attacker,
        bridge_identity_name(victim.edges[0]),
        victim,
    )


def _concrete(topic_filter: str) -> str:
    return topic_filter.replace("+", PROBE_LEAF).replace("#", PROBE_LEAF)


def cross_site_problems(
    ctx: FleetContext, core_name: str, connect_name: str, pair: CrossSite
) -> list[str]:
    """What the attacker got of the victim's topics at the core (nothing, on a sound core)."""
    fleet = ctx.fleet
    target = Target(
        connect_name, bridge_listener_port(fleet.broker(core_name)), ctx.pki.ca_chain_pem()
    )
    port = f"{core_name}:{target.port}"
    victim_topics = [topic for _, topic in site_rules(fleet, pair.victim_site)]
    own = f"bridge {pair.attacker} (site {pair.attacker_site.name})"
    problems: list[str] = []
    try:
        with ExitStack() as stack:
            spy = stack.enter_context(session(target, _identity(ctx, pair.attacker)))
            for topic_filter in ["#", *victim_topics]:
                spy.subscribe(topic_filter)
            for topic_filter in victim_topics:
                topic = _concrete(topic_filter)
                if succeeded(spy.publish(topic, PROBE_PAYLOAD)):
                    problems.append(
                        f"{own} may publish {topic} of site {pair.victim_site.name} at {port}"
                    )
            talker = stack.enter_context(session(target, _identity(ctx, pair.victim)))
            telemetry = next(t for t in victim_topics if "/telemetry/" in t)
            # The control: site b's own bridge may publish this at the core; were it refused,
            # the spy receiving nothing would prove nothing.
            if not succeeded(talker.publish(_concrete(telemetry), PROBE_PAYLOAD)):
                return [
                    *problems,
                    f"bridge {pair.victim} (site {pair.victim_site.name}) may not publish "
                    f"{_concrete(telemetry)} at {port}: the cross-site read cannot be shown",
                ]
            spy.idle(SETTLE_SECONDS)
            received = sorted({m.topic for m in spy.messages()})
    except (ProbeError, TimeoutError) as exc:
        return [f"{own} could not probe {port}: {exc or 'timed out'}"]
    for topic in received:
        if any(topic_matches(f, topic) for f in victim_topics):
            problems.append(f"{own} reads {topic} of site {pair.victim_site.name} at {port}")
        elif not any(
            topic_matches(f, topic) for a, f in site_rules(fleet, pair.attacker_site) if a == "read"
        ):
            problems.append(f"{own} reads {topic} at {port}: not a topic of its site")
    return problems


def _identity(ctx: FleetContext, name: str) -> Identity:
    return Identity(ctx.pki.certificate_pem(name), ctx.pki.private_key_pem(name))
