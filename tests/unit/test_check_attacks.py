"""The adversary checks (factor matrix, oversized CONNECT, retained flood, connection burst):
what the inventory expects, and the attacks against a real local Mosquitto running the
configuration the mosquitto role renders today, then with each hole closed by hand.

tests/integration/test_adversary.py shows the same checks on real lab brokers.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from iotfleet.check import mqtt_checks, raw_attacks
from iotfleet.check.factors import (
    CERTIFICATE,
    PASSWORD,
    Principal,
    admitted,
    matrix,
    mixed_pairs,
    why_refused,
)
from iotfleet.check.identities import credentials
from iotfleet.check.mqtt_probe import session
from iotfleet.model.own_identities import PROBE_DEVICE, PROBE_PEER
from iotfleet.mosquitto import layout
from tests.unit.test_check_probes import BOTH, CERT, Local, local
from tests.unit.test_check_probes import PASSWORD as PASSWORD_LISTENER

__all__ = ["local"]  # the module fixture: a fleet of one local broker

CERT_ONLY, PW_ONLY, BOTH_FACTORS = (
    frozenset({CERTIFICATE}),
    frozenset({PASSWORD}),
    frozenset({CERTIFICATE, PASSWORD}),
)
PROBE = Principal(PROBE_DEVICE, "probe device", None, certificate=True, password=True)
PEER = Principal(PROBE_PEER, "probe peer", None, certificate=True, password=False)
OPS = Principal("ops", "client ops", "certificate", certificate=True, password=False)
DESK = Principal("desk", "client desk", "certificate+password", certificate=True, password=True)
BOARD = Principal("board", "client board", "password", certificate=False, password=True)


# -- what the inventory expects ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "principal", "factors", "expected"),
    [
        # a certificate+password client: both factors, on its own kind of listener only
        ("certificate+password", DESK, BOTH_FACTORS, True),
        ("certificate+password", DESK, PW_ONLY, False),
        ("certificate+password", DESK, CERT_ONLY, False),
        ("password", DESK, PW_ONLY, False),
        ("password", DESK, BOTH_FACTORS, False),
        ("certificate", DESK, CERT_ONLY, False),
        # a password client on password listeners; a certificate client on certificate ones
        ("password", BOARD, PW_ONLY, True),
        ("certificate+password", BOARD, PW_ONLY, False),
        ("certificate", OPS, CERT_ONLY, True),
        ("password", OPS, CERT_ONLY, False),
        ("certificate+password", OPS, CERT_ONLY, False),
        # a device with a password may use every kind; a certificate shown to a password
        # listener changes nothing
        ("certificate", PROBE, CERT_ONLY, True),
        ("password", PROBE, PW_ONLY, True),
        ("password", PROBE, BOTH_FACTORS, True),
        ("certificate+password", PROBE, BOTH_FACTORS, True),
        ("certificate+password", PROBE, CERT_ONLY, False),
        ("password", PEER, CERT_ONLY, False),
    ],
)
def test_who_gets_in_follows_the_inventory(
    listener: str, principal: Principal, factors: frozenset[str], expected: bool
) -> None:
    assert admitted(listener, principal, factors) is expected


def test_refusals_say_why_and_every_factor_combination_is_tried() -> None:
    assert why_refused("password", DESK, PW_ONLY) == (
        "it may log in only on certificate+password listeners, this one is password"
    )
    assert why_refused("certificate+password", DESK, PW_ONLY) == (
        "the listener asks for certificate and password; certificate missing"
    )
    elsewhere = Principal("gw-9", "device gw-9", None, True, False, allowed=False)
    assert why_refused("certificate", elsewhere, CERT_ONLY) == (
        "the inventory does not allow gw-9 on this broker"
    )
    attempts = matrix("password", [PROBE, DESK, BOARD])
    assert [(a.principal.name, sorted(a.factors), a.expected) for a in attempts] == [
        (PROBE_DEVICE, ["certificate"], False),
        (PROBE_DEVICE, ["password"], True),
        (PROBE_DEVICE, ["certificate", "password"], True),
        ("desk", ["certificate"], False),
        ("desk", ["password"], False),
        ("desk", ["certificate", "password"], False),
        ("board", ["password"], True),
    ]


def test_mixed_pairs_give_each_login_other_kinds_of_certificates() -> None:
    pairs = [(c.name, login.name) for c, login in mixed_pairs([PROBE, PEER, OPS, DESK, BOARD])]
    assert pairs == [
        (PROBE_PEER, PROBE_DEVICE),
        ("ops", PROBE_DEVICE),
        ("desk", PROBE_DEVICE),
        (PROBE_DEVICE, "desk"),
        ("ops", "desk"),
        (PROBE_PEER, "desk"),
        (PROBE_DEVICE, "board"),
        ("ops", "board"),
        (PROBE_PEER, "board"),
        ("desk", "board"),
    ]


def test_raw_packets_are_what_an_attacker_sends() -> None:
    assert raw_attacks.remaining_length(0) == b"\x00"
    assert raw_attacks.remaining_length(127) == b"\x7f"
    assert raw_attacks.remaining_length(128) == b"\x80\x01"
    assert raw_attacks.remaining_length(raw_attacks.MAX_REMAINING_LENGTH) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError):
        raw_attacks.remaining_length(raw_attacks.MAX_REMAINING_LENGTH + 1)
    assert raw_attacks.oversized_connect()[:5] == b"\x10\xff\xff\xff\x7f"
    frame = raw_attacks.websocket_frame(b"\x10\x02ab")
    assert frame[:2] == b"\x82\x84"  # binary, final; masked, 4 bytes
    mask, body = frame[2:6], frame[6:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == b"\x10\x02ab"


def test_a_connection_burst_counts_what_is_answered() -> None:
    """A listener that never accepts (backlog full) answers only a few of a burst."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert raw_attacks.connection_burst("127.0.0.1", port, 10, wait=1) < 10
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        assert raw_attacks.connection_burst("127.0.0.1", port, 10, wait=2) == 10
        assert raw_attacks.answers("127.0.0.1", port)


# -- against a real Mosquitto -----------------------------------------------------------------


PLUGIN_LINE = re.compile(r"^(plugin|plugin_opt_\S+)\s.*\n", re.MULTILINE)


def _before_the_fixes(local: Local, tmp_path: Path) -> Callable[[int, str], str]:
    """Listener blocks as before issue 10: no plugin, one password file shared by every
    password listener (each listener's own users together)."""
    shared = tmp_path / "passwd-shared"
    shared.write_text(
        "".join(path.read_text() for live, path in sorted(local.files.items()) if "passwd-" in live)
    )

    def change(_port: int, block: str) -> str:
        block = PLUGIN_LINE.sub("", block)
        return re.sub(r"^password_file \S+$", f"password_file {shared}", block, flags=re.M)

    return change


def test_a_broker_before_the_fixes_lets_the_wrong_factors_in(local: Local, tmp_path: Path) -> None:
    """One shared password file and no CN binding: desk's password alone, desk's certificate
    alone, and any certificate with any login get in."""
    with local.running(tmp_path, _before_the_fixes(local, tmp_path)):
        prober = local.prober()
        password, cert, both = (local.listener(i) for i in (PASSWORD_LISTENER, CERT, BOTH))
        assert (
            "client desk (auth certificate+password, has certificate and password) gets in on "
            f"{password.id} (password) with its password alone: it may log in only on "
            "certificate+password listeners, this one is password"
        ) in prober.factor_matrix(password)
        assert any(
            p.startswith("client desk (auth certificate+password")
            and "with its certificate alone" in p
            for p in prober.factor_matrix(cert)
        )
        assert prober.factor_matrix(both) == []
        mixed = prober.mixed_identities(both)
        assert (
            f"the certificate of device gw-1 with the login of probe device {PROBE_DEVICE} gets "
            f"in on {both.id} as {PROBE_DEVICE}: the certificate's CN (gw-1) must be the "
            "username on a certificate+password listener"
        ) in mixed
        assert any("with the login of client desk gets in" in p for p in mixed)


def test_iotfleets_broker_admits_exactly_the_inventorys_factors(
    local: Local, tmp_path: Path
) -> None:
    """Per-listener password files and the plugin: every attempt the matrix makes comes out as
    the inventory says (desk's certificate alone on the certificate listener may do nothing)."""
    with local.running(tmp_path):
        prober = local.prober()
        for index in (PASSWORD_LISTENER, CERT, BOTH):
            assert prober.factor_matrix(local.listener(index)) == []
        assert prober.mixed_identities(local.listener(BOTH)) == []


def test_an_oversized_connect_is_closed_only_with_max_packet_size(
    local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_checks, "OVERSIZE_WAIT", 1.0)
    password, cert = local.listener(PASSWORD_LISTENER), local.listener(CERT)

    def unbounded(head: str) -> str:
        return re.sub(r"^max_packet_size .*\n", "", head, flags=re.M)

    with local.running(tmp_path, head_change=unbounded):
        prober = local.prober()
        for target in (password, cert):
            assert prober.oversized_connect(target) == [
                "a CONNECT announcing 268435455 bytes (256 MiB) before authentication is not "
                f"refused on {target.id}: the connection stayed open, the broker reading after "
                "1 s (the broker waits for the rest: no max_packet_size)"
            ]
    with local.running(tmp_path):
        prober = local.prober()
        assert prober.oversized_connect(password) == []
        assert prober.oversized_connect(cert) == []


def test_a_retained_flood_is_counted_and_cleared(local: Local, tmp_path: Path) -> None:
    cert = local.listener(CERT)
    prefix = f"devices/{PROBE_DEVICE}"
    with local.running(tmp_path, _before_the_fixes(local, tmp_path)):
        prober = local.prober()
        problems = prober.retained_flood(cert)
        reader, where = prober._reader(PROBE_DEVICE) or ("", cert)
        assert reader == "board"
        assert problems == [
            f"probe device {PROBE_DEVICE} keeps 5 retained message(s) on its own telemetry "
            f"topics via {cert.id} (a fresh subscriber, client board on {where.id}, read them "
            f"back); only {prefix}/status may hold one"
        ]
        # Cleared: a new subscriber finds nothing of the flood.
        identity = credentials(local.ctx, "board", where.listener)
        with session(prober.mqtt_target(where), identity, reconnect=False, timeout=3) as spy:
            spy.subscribe(f"{prefix}/#")
            spy.idle(0.5)
            assert [m.topic for m in spy.messages(prefix) if m.retain] == []
    with local.running(tmp_path):
        assert local.prober().retained_flood(cert) == []


def test_a_device_that_may_not_publish_telemetry_keeps_nothing(
    local: Local, tmp_path: Path
) -> None:
    acl = local.files[layout.ACL_FILE]
    original = acl.read_text()
    acl.write_text(original.replace(f"topic write devices/{PROBE_DEVICE}/telemetry/#\n", ""))
    try:
        with local.running(tmp_path):
            assert local.prober().retained_flood(local.listener(CERT)) == []
    finally:
        acl.write_text(original)


def test_no_rate_limit_is_named(local: Local, tmp_path: Path) -> None:
    password = local.listener(PASSWORD_LISTENER)
    with local.running(tmp_path):
        assert local.prober().password_rate_limit(password, allowed_burst=20) == [
            f"no per-source rate limit on {password.id}: all 40 new connections opened at once "
            "from this host were answered within 3 s (each one can try passwords)"
        ]
