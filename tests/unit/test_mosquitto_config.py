"""The rendered mosquitto.conf, ACL and password file, run by a real local Mosquitto.

Fast feedback on the templates without a lab: the lab integration tests repeat the important
checks against the deployed, sandboxed broker.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from iotfleet.check.mqtt_probe import (
    NOT_AUTHORIZED,
    Identity,
    Target,
    session,
    succeeded,
    try_connect,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import EXPIRED_CANARY, REVOKED_CANARY, load_canary, reconcile_fleet
from iotfleet.model import RawHost, build_fleet
from iotfleet.pki.testing import make_foreign_ca_identity
from iotfleet.roles.mosquitto.render import service_files
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto

PASSPHRASE = "unit-test-passphrase-0123"


@dataclass
class LocalBroker:
    ctx: FleetContext
    cert_port: int
    password_port: int
    both_port: int
    websockets_port: int

    def target(self, port: int) -> Target:
        return Target("localhost", port, self.ctx.pki.ca_chain_pem(), port == self.websockets_port)

    def device(self, name: str) -> Identity:
        return Identity(self.ctx.pki.certificate_pem(name), self.ctx.pki.private_key_pem(name))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("broker")
    mp = pytest.MonkeyPatch()
    mp.setenv("IOTFLEET_HOME", str(home))
    mp.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    ports = [free_port() for _ in range(4)]
    fleet = build_fleet(
        [
            RawHost(
                "localhost",
                ("brokers",),
                {
                    "fleet_name": "unit",
                    "ssh_hostname": "127.0.0.1",
                    "mosquitto_listeners": [
                        {"port": ports[0]},
                        {"port": ports[1], "auth": "password"},
                        {"port": ports[2], "auth": "certificate+password"},
                        {"port": ports[3], "protocol": "websockets", "auth": "password"},
                    ],
                    "fleet_devices": [{"id": "gw-1"}, {"id": "gw-2"}],
                    "fleet_clients": [
                        {"name": "ops", "roles": ["admin"]},
                        {
                            "name": "wallboard",
                            "roles": ["dashboard"],
                            "auth": "password",
                            "password": "generated",
                        },
                        {
                            "name": "desk",
                            "roles": ["operator"],
                            "auth": "certificate+password",
                            "password": "generated",
                        },
                    ],
                },
            )
        ]
    )
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    broker_host = fleet.brokers[0]
    config, files = service_files(ctx, broker_host)
    paths: dict[str, str] = {}
    for managed in [*broker_pki_files(ctx.pki, broker_host.name), *files]:
        local = work / managed.staged_name
        local.write_bytes(managed.content)
        paths[managed.path] = str(local)
    with running_mosquitto(config.text(paths), work, ports):
        yield LocalBroker(ctx, *ports)
    mp.undo()


def test_device_certificate_connects_and_publishes_only_to_its_own_topics(
    broker: LocalBroker,
) -> None:
    with session(broker.target(broker.cert_port), broker.device("gw-1")) as gw:
        assert succeeded(gw.publish("devices/gw-1/telemetry/temp"))
        assert gw.publish("devices/gw-2/telemetry/temp") == NOT_AUTHORIZED
        assert gw.subscribe("devices/gw-1/commands/#") == 1


def test_device_cannot_read_other_devices_everything_or_sys(broker: LocalBroker) -> None:
    """Mosquitto grants the SUBACK and filters at delivery: judge by what arrives."""
    target = broker.target(broker.cert_port)
    with (
        session(target, broker.device("gw-1")) as spy,
        session(target, broker.device("ops")) as admin,
        session(target, broker.device("gw-2")) as other,
    ):
        for topic in ("devices/gw-2/telemetry/#", "#", "$SYS/#"):
            spy.subscribe(topic)
            admin.subscribe(topic)
        assert succeeded(other.publish("devices/gw-2/telemetry/temp", b"21.5"))
        assert admin.wait_for_message("devices/gw-2/telemetry/", timeout=5)
        assert admin.wait_for_message("$SYS/", timeout=5)
        assert not spy.wait_for_message("", timeout=1), [m.topic for m in spy.messages()]


@pytest.mark.parametrize("identity_name", ["anonymous", "foreign", REVOKED_CANARY, EXPIRED_CANARY])
def test_certificate_listener_refuses_bad_clients(broker: LocalBroker, identity_name: str) -> None:
    if identity_name == "anonymous":
        identity = Identity()
    elif identity_name == "foreign":
        foreign = make_foreign_ca_identity("gw-1")
        identity = Identity(foreign.certificate_pem, foreign.private_key_pem)
    else:
        canary = load_canary(broker.ctx.state_dir, identity_name)
        identity = Identity(canary.certificate_pem, canary.private_key_pem)
    result = try_connect(broker.target(broker.cert_port), identity)
    assert not result.accepted, result


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt", "websockets"])
def test_tls_1_1_is_refused(broker: LocalBroker, websockets: bool) -> None:
    """The same client is accepted with TLS 1.2+ and refused when it offers TLS 1.1 at most."""
    if websockets:
        password = broker.ctx.passwords["wallboard"].get_secret_value()
        port, client = broker.websockets_port, Identity(username="wallboard", password=password)
    else:
        port, client = broker.cert_port, broker.device("gw-1")
    assert try_connect(broker.target(port), client).accepted
    result = try_connect(broker.target(port), client, tls_maximum=ssl.TLSVersion.TLSv1_1)
    assert not result.accepted and "TLS" in result.detail


def test_websockets_listener_takes_passwords_over_tls(broker: LocalBroker) -> None:
    password = broker.ctx.passwords["wallboard"].get_secret_value()
    target = broker.target(broker.websockets_port)
    with session(target, Identity(username="wallboard", password=password)) as board:
        assert board.publish("devices/gw-1/commands/reboot") == NOT_AUTHORIZED
    assert not try_connect(target, Identity(username="wallboard", password="x" * 32)).accepted
    assert not try_connect(target, Identity()).accepted
    assert not try_connect(target, broker.device("gw-1")).accepted


def test_password_listener(broker: LocalBroker) -> None:
    password = broker.ctx.passwords["wallboard"].get_secret_value()
    target = broker.target(broker.password_port)
    assert try_connect(target, Identity(username="wallboard", password=password)).accepted
    assert not try_connect(target, Identity(username="wallboard", password="x" * 32)).accepted
    assert not try_connect(target, Identity(username="#", password="")).accepted
    assert not try_connect(target, Identity()).accepted


def test_two_factor_listener_needs_certificate_and_password(broker: LocalBroker) -> None:
    password = broker.ctx.passwords["desk"].get_secret_value()
    target = broker.target(broker.both_port)
    desk = broker.device("desk")
    both = Identity(desk.certificate_pem, desk.private_key_pem, "desk", password)
    assert try_connect(target, both).accepted
    assert not try_connect(target, Identity(username="desk", password=password)).accepted
    assert not try_connect(target, desk).accepted
    # Another identity's certificate with desk's login: the CN is not the username.
    gw = broker.device("gw-1")
    stolen = Identity(gw.certificate_pem, gw.private_key_pem, "desk", password)
    assert not try_connect(target, stolen).accepted
    # A password-only client has no password on the two-factor listener.
    wallboard = broker.ctx.passwords["wallboard"].get_secret_value()
    board = Identity(desk.certificate_pem, desk.private_key_pem, "wallboard", wallboard)
    assert not try_connect(target, board).accepted


def test_two_factor_clients_password_alone_is_refused_on_password_listeners(
    broker: LocalBroker,
) -> None:
    password = broker.ctx.passwords["desk"].get_secret_value()
    for port in (broker.password_port, broker.websockets_port):
        result = try_connect(broker.target(port), Identity(username="desk", password=password))
        assert not result.accepted and result.detail == "CONNACK refused: Not authorized"


def test_a_device_cannot_take_over_another_devices_session(broker: LocalBroker) -> None:
    """Without use_username_as_clientid, connecting with gw-2's client id kicks gw-2 off."""
    target = broker.target(broker.cert_port)
    with (
        session(target, broker.device("gw-2"), client_id="gw-2") as victim,
        session(target, broker.device("gw-1"), client_id="gw-2") as intruder,
    ):
        assert succeeded(intruder.publish("devices/gw-1/telemetry/temp"))
        assert succeeded(victim.publish("devices/gw-2/telemetry/temp"))
        assert (victim.disconnections, intruder.disconnections) == (0, 0)
