"""The bridge checks of the compliance suite, on the files the rollout renders and a real core.

Each judging function passes on what the rollout renders (with certificates of a temporary
fleet PKI) and fails, naming the problem, on a broken copy: a plain-text bridge, a bridge to a
port that is not a core's certificate listener, extra or missing topics, a device's
certificate and key in place of the bridge identity, a core ACL giving a bridge ``#`` or
another site's devices. The outside attack runs against a real Mosquitto core on loopback,
with the rendered ACL and with a broken one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iotfleet.check.bridge_attacks import CrossSite, cross_site_pair, cross_site_problems
from iotfleet.check.bridge_checks import (
    BridgeSample,
    bridge_config_problems,
    bridge_identity_problems,
    bridge_state_problems,
    core_acl_problems,
)
from iotfleet.check.host_facts import TcpConnection, parse_established
from iotfleet.fleet.context import FleetContext
from iotfleet.model.own_identities import (
    bridge_identity_name,
    bridge_state_topic,
    health_identity_name,
)
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import acl_file, acl_rules, render_acl
from iotfleet.roles.mosquitto.render import service_files
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import running_mosquitto
from tests.unit.test_sites_bridge import PASSPHRASE, planned

EDGE = "edge-a1"
BRIDGE = bridge_identity_name(EDGE)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetContext]:
    mp = pytest.MonkeyPatch()
    mp.setenv("IOTFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    mp.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    yield planned()
    mp.undo()


def rendered(ctx: FleetContext, broker: str, path: str) -> str:
    config, files = service_files(ctx, ctx.fleet.broker(broker))
    if path == layout.CONFIG:
        return config.text({})
    return next(f.content for f in files if f.path == path).decode()


# -- the edge's bridge configuration ---------------------------------------------------------


def test_the_rendered_bridge_passes(ctx: FleetContext) -> None:
    assert bridge_config_problems(EDGE, ctx.fleet, rendered(ctx, EDGE, layout.CONFIG)) == []


def test_a_core_has_no_bridge_and_passes(ctx: FleetContext) -> None:
    assert bridge_config_problems("core-1", ctx.fleet, rendered(ctx, "core-1", layout.CONFIG)) == []


def edited(ctx: FleetContext, edit: Callable[[str], str]) -> list[str]:
    text = rendered(ctx, EDGE, layout.CONFIG)
    broken = edit(text)
    assert broken != text
    return bridge_config_problems(EDGE, ctx.fleet, broken)


def without(option: str) -> Callable[[str], str]:
    return lambda text: "\n".join(
        line for line in text.splitlines() if not line.startswith(f"{option} ")
    )


def test_a_plain_text_bridge_fails(ctx: FleetContext) -> None:
    problems = edited(ctx, without("bridge_cafile"))
    assert f"the bridge of {EDGE} ({BRIDGE}) is plain text: no bridge_cafile" in problems[0]


def test_a_bridge_to_a_port_that_is_not_the_cores_certificate_listener_fails(
    ctx: FleetContext,
) -> None:
    port = ctx.fleet.broker("core-1").mosquitto.listeners[0].port

    def to_1883(text: str) -> str:
        return text.replace(f"address 127.0.0.1:{port}", "address 127.0.0.1:1883")

    problems = edited(ctx, to_1883)
    assert any(
        f"connects to 127.0.0.1:1883: 127.0.0.1's TLS certificate listener is port {port}" in p
        for p in problems
    ), problems


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("bridge_insecure false", "bridge_insecure true"), "bridge_insecure"),
        (
            lambda t: t.replace("bridge_tls_version tlsv1.2", "bridge_tls_version tlsv1.1"),
            "allows TLS below 1.2 (bridge_tls_version tlsv1.1)",
        ),
        (without("bridge_tls_version"), "allows TLS below 1.2"),
        (
            lambda t: t.replace(layout.BRIDGE_CERT, layout.SERVER_CERT),
            f"bridge_certfile {layout.SERVER_CERT}, not {layout.BRIDGE_CERT}",
        ),
        (
            lambda t: t.replace(layout.BRIDGE_KEY, "/etc/mosquitto/certs/gw-a.key"),
            "bridge_keyfile /etc/mosquitto/certs/gw-a.key",
        ),
        (
            lambda t: t + "topic # both 1\n",
            "carries # both (qos 1): not a topic of its site's devices",
        ),
        (
            lambda t: t + "topic devices/gw-b/telemetry/# out 1\n",
            "carries devices/gw-b/telemetry/# out (qos 1)",
        ),
        (
            without("topic devices/gw-a/commands/#"),
            "does not carry devices/gw-a/commands/# in (qos 1)",
        ),
        (lambda t: t.replace("cleansession false", "cleansession true"), "cleansession true"),
        (
            lambda t: t + "\nconnection sneaky\naddress 192.0.2.99:8883\n",
            "a bridge the inventory does not give it: connection sneaky",
        ),
    ],
)
def test_a_broken_bridge_configuration_fails_naming_the_setting(
    ctx: FleetContext, edit: Callable[[str], str], expected: str
) -> None:
    problems = edited(ctx, edit)
    assert any(expected in p for p in problems), problems


def test_a_bridge_in_an_included_file_is_seen(ctx: FleetContext) -> None:
    sneaky = "connection sneaky\naddress 192.0.2.99:1883\ntopic # both 0\n"
    problems = bridge_config_problems(EDGE, ctx.fleet, rendered(ctx, EDGE, layout.CONFIG), sneaky)
    assert problems == [f"{EDGE} has a bridge the inventory does not give it: connection sneaky"]


def test_an_edge_without_its_bridge_fails(ctx: FleetContext) -> None:
    config = rendered(ctx, EDGE, layout.CONFIG)
    before_bridge = config.split("\nconnection ")[0]
    assert bridge_config_problems(EDGE, ctx.fleet, before_bridge) == [
        f"{EDGE} has no bridge (connection {BRIDGE}) in its configuration"
    ]


# -- the bridge identity ---------------------------------------------------------------------


def identity_problems(ctx: FleetContext, cert_name: str, key_name: str) -> list[str]:
    pki = ctx.pki
    return bridge_identity_problems(
        EDGE,
        pki.certificate_pem(BRIDGE),
        pki.private_key_pem(BRIDGE),
        pki.certificate_pem(cert_name),
        hashlib.sha256(pki.private_key_pem(key_name)).hexdigest(),
    )


def test_the_edges_own_bridge_identity_passes(ctx: FleetContext) -> None:
    assert identity_problems(ctx, BRIDGE, BRIDGE) == []


def test_a_devices_certificate_and_key_in_place_of_the_bridge_identity_fail(
    ctx: FleetContext,
) -> None:
    problems = identity_problems(ctx, "gw-a", "gw-a")
    assert problems[0] == (
        f"{layout.BRIDGE_CERT} on {EDGE} is the certificate of 'gw-a', not of the edge's bridge "
        f"identity '{BRIDGE}'"
    )
    assert any("is not a bridge identity" in p for p in problems), problems
    assert problems[-1] == f"{layout.BRIDGE_KEY} on {EDGE} is not the key of {BRIDGE}"


def test_another_edges_bridge_identity_fails(ctx: FleetContext) -> None:
    other = bridge_identity_name("edge-b1")
    problems = identity_problems(ctx, other, other)
    assert f"is the certificate of '{other}'" in problems[0], problems


def test_a_missing_bridge_identity_fails(ctx: FleetContext) -> None:
    problems = bridge_identity_problems(
        EDGE, ctx.pki.certificate_pem(BRIDGE), ctx.pki.private_key_pem(BRIDGE), None, None
    )
    assert problems == [
        f"{layout.BRIDGE_CERT} is missing on {EDGE}",
        f"{layout.BRIDGE_KEY} is missing on {EDGE}",
    ]


# -- the bridge state ------------------------------------------------------------------------


CORES = ["192.0.2.10:8883", "192.0.2.11:8883"]
TO_CORE = TcpConnection("192.0.2.20:41000", "192.0.2.11:8883")
TO_CORE_AGAIN = TcpConnection("192.0.2.20:41002", "192.0.2.11:8883")  # a new connection
SSH = TcpConnection("192.0.2.20:22", "192.0.2.50:51000")


def _state(samples: list[BridgeSample]) -> list[str]:
    return bridge_state_problems(EDGE, BRIDGE, samples, CORES, 10)


def test_a_bridge_connected_to_a_core_on_one_connection_for_a_while_passes() -> None:
    assert _state([
        BridgeSample(0.0, b"1", (TO_CORE, SSH)),
        BridgeSample(5.0, b"1", (TO_CORE, SSH)),
        BridgeSample(10.5, b"1", (SSH, TO_CORE)),
    ]) == []  # fmt: skip
    # A bridge that came back (a core restarted) and then stayed passes too.
    assert _state([
        BridgeSample(0.0, b"0", (SSH,)),
        BridgeSample(2.0, b"1", (TO_CORE_AGAIN,)),
        BridgeSample(12.0, b"1", (TO_CORE_AGAIN,)),
    ]) == []  # fmt: skip


def test_a_bridge_down_unreadable_or_elsewhere_fails() -> None:
    topic = f"$SYS/broker/connection/{BRIDGE}/state"
    down = [BridgeSample(0.0, b"1", (TO_CORE,)), BridgeSample(10.0, b"0", (TO_CORE,))]
    assert _state(down) == [f"the bridge of {EDGE} is not connected ({topic} is '0')"]
    unread = _state([BridgeSample(0.0, None, (TO_CORE,))])
    assert "could not be read" in unread[0]
    far = TcpConnection("192.0.2.20:41000", "192.0.2.99:8883")
    elsewhere = _state([BridgeSample(0.0, b"1", (far,)), BridgeSample(10.0, b"1", (far,))])
    assert "no connection to a core of its site" in elsewhere[0]


def test_a_bridge_connected_at_each_look_but_on_a_new_connection_each_time_fails() -> None:
    """Two edges with one cloned bridge identity take each other's session at the core: each
    bridge says 1 whenever it is looked at, on a connection that did not last."""
    flapping = [
        BridgeSample(0.0, b"1", (TO_CORE,)),
        BridgeSample(10.0, b"1", (TO_CORE_AGAIN,)),
    ]
    assert _state(flapping) == [
        f"the bridge of {EDGE} did not stay connected for 10 s: its connection to a core "
        "changed (local 192.0.2.20:41000, 192.0.2.20:41002; another broker logging in as the "
        "same bridge identity takes its session at the core)"
    ]
    # Connected once, not yet for long enough: not judged connected either.
    assert "has not been connected for 10 s yet" in _state(flapping[:1])[0]


def test_established_connections_of_mosquitto_are_read_from_ss() -> None:
    output = (
        '0 0 10.0.0.5:41234 10.0.0.1:8883 users:(("mosquitto",pid=12,fd=9))\n'
        '0 0 10.0.0.5:22 10.0.0.9:50000 users:(("sshd",pid=40,fd=4))\n'
        '0 0 [2001:db8::5]:41000 [2001:db8::1]:8883 users:(("mosquitto",pid=12,fd=10))\n'
    )
    assert parse_established(output, "mosquitto") == [
        TcpConnection("10.0.0.5:41234", "10.0.0.1:8883"),
        TcpConnection("2001:db8::5:41000", "2001:db8::1:8883"),
    ]


def test_the_health_identity_of_an_edge_may_read_its_bridge_state_and_nothing_more(
    ctx: FleetContext,
) -> None:
    rules = acl_rules(ctx.fleet, EDGE)[health_identity_name(EDGE)]
    assert ("read", bridge_state_topic(EDGE)) in rules and len(rules) == 2
    assert len(acl_rules(ctx.fleet, "core-1")[health_identity_name("core-1")]) == 1


# -- the cores' ACL --------------------------------------------------------------------------


def test_the_rendered_core_acl_passes(ctx: FleetContext) -> None:
    assert core_acl_problems("core-1", ctx.fleet, rendered(ctx, "core-1", layout.ACL_FILE)) == []


def broken_acl(ctx: FleetContext, rules: list[tuple[str, str]], user: str = BRIDGE) -> str:
    acl = acl_file(ctx.fleet, "core-1")
    acl.users[user] = [*acl.users.get(user, []), *rules]
    return render_acl(acl)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([("readwrite", "#")], "lets bridge " + BRIDGE + " (site a) readwrite #"),
        (
            [("write", "devices/gw-b/telemetry/#")],
            "write devices/gw-b/telemetry/#: beyond its site's devices",
        ),
        ([("read", "devices/gw-b/commands/#")], "read devices/gw-b/commands/#"),
    ],
)
def test_a_core_acl_giving_a_bridge_more_than_its_site_fails(
    ctx: FleetContext, rules: list[tuple[str, str]], expected: str
) -> None:
    problems = core_acl_problems("core-1", ctx.fleet, broken_acl(ctx, rules))
    assert any(expected in p for p in problems), problems


def test_a_core_acl_with_a_general_pattern_or_an_unknown_bridge_fails(ctx: FleetContext) -> None:
    text = broken_acl(ctx, [("write", "devices/#")], user="iotfleet-bridge-stolen")
    problems = core_acl_problems("core-1", ctx.fleet, text + "pattern readwrite #\n")
    assert "lines for every user" in problems[0], problems
    # The pattern reaches every bridge: each is named with what it gets beyond its site.
    assert f"lets bridge {BRIDGE} (site a) readwrite #: beyond" in " ".join(problems), problems
    stolen = "grants iotfleet-bridge-stolen, a bridge identity the inventory does not"
    assert any(stolen in p for p in problems), problems


# -- from outside: a site's bridge identity at a real core -----------------------------------


@contextmanager
def running_core(ctx: FleetContext, work: Path, acl: str | None = None) -> Iterator[None]:
    """core-1 with its rendered files (its ACL replaced by ``acl`` when given)."""
    broker = ctx.fleet.broker("core-1")
    config, files = service_files(ctx, broker)
    paths: dict[str, str] = {}
    for managed in [*broker_pki_files(ctx.pki, "core-1"), *files]:
        local = work / managed.staged_name
        content = acl.encode() if acl is not None and managed.path == layout.ACL_FILE else None
        local.write_bytes(content or managed.content)
        paths[managed.path] = str(local)
    ports = [listener.port for listener in broker.mosquitto.listeners]
    with running_mosquitto(config.text(paths), work, ports):
        yield


def pair_of(ctx: FleetContext) -> CrossSite:
    pair = cross_site_pair(ctx.fleet, "core-1")
    assert isinstance(pair, CrossSite), pair
    assert (pair.attacker, pair.victim) == (BRIDGE, bridge_identity_name("edge-b1"))
    return pair


def test_a_sites_bridge_gets_nothing_of_another_site_at_a_sound_core(
    ctx: FleetContext, tmp_path: Path
) -> None:
    with running_core(ctx, tmp_path):
        assert cross_site_problems(ctx, "core-1", "127.0.0.1", pair_of(ctx)) == []


def test_a_sites_bridge_reads_and_writes_another_site_at_a_core_with_a_wrong_acl(
    ctx: FleetContext, tmp_path: Path
) -> None:
    with running_core(ctx, tmp_path, broken_acl(ctx, [("readwrite", "devices/gw-b/#")])):
        problems = cross_site_problems(ctx, "core-1", "127.0.0.1", pair_of(ctx))
    port = ctx.fleet.broker("core-1").mosquitto.listeners[0].port
    forged = f"bridge {BRIDGE} (site a) may publish devices/gw-b/status of site b at core-1:{port}"
    assert forged in problems, problems
    assert any(
        p.startswith(f"bridge {BRIDGE} (site a) reads devices/gw-b/telemetry/") for p in problems
    ), problems


def test_the_attack_does_not_apply_to_an_edge(ctx: FleetContext) -> None:
    assert cross_site_pair(ctx.fleet, EDGE) == f"{EDGE} is not a core broker of a multi-site fleet"
