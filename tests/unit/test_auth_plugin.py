"""iotfleet's Mosquitto plugin, built with gcc and loaded by a real local Mosquitto.

The broker has a password listener (plain, loopback) and a certificate+password listener
(TLS); 127.0.0.1 is the only local address it is given, so a client bound to 127.0.0.2 stands
in for a remote one. Clients are paho-mqtt (MQTT 5).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotfleet.check.tls_context import client_context
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model import RawHost, build_fleet
from iotfleet.mosquitto.passwd import derive_salt, render_password_file
from iotfleet.roles.mosquitto.plugin_build import auth_plugin
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto

PASSPHRASE = "unit-test-passphrase-0123"
HEALTH = "iotfleet-health-localhost"
NOT_AUTHORIZED = 0x87
WAIT = 10  # seconds an answer the broker owes may take (never a measured time)


@dataclass
class Broker:
    ctx: FleetContext
    work: Path
    log: Path
    pid: int
    password_port: int
    both_port: int
    plain_port: int  # plugin's file and Mosquitto's own differ here (defense in depth)
    passwords: dict[str, str]

    def cert(self, name: str) -> tuple[bytes, bytes]:
        return self.ctx.pki.certificate_pem(name), self.ctx.pki.private_key_pem(name)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def write_passwords(self, passwords: dict[str, str]) -> None:
        def salt_of(user: str, password: str) -> bytes:
            return derive_salt(b"k" * 32, user=user, password=password)

        (self.work / "passwd").write_text(render_password_file(passwords, salt_of, 1000))


class Client:
    """A connected paho client; methods wait for the broker's answer."""

    def __init__(self, mqttc: mqtt.Client) -> None:
        self.mqttc = mqttc
        self.messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, threading.Event] = {}
        self._codes: dict[int, int] = {}
        self._lock = threading.Lock()
        mqttc.on_publish = self._on_ack
        mqttc.on_subscribe = self._on_subscribe
        mqttc.on_message = lambda _c, _u, m: self.messages.append(m)

    def _event(self, mid: int) -> threading.Event:
        with self._lock:
            return self._acks.setdefault(mid, threading.Event())

    def _on_ack(self, _c: object, _u: object, mid: int, code: object, _p: object) -> None:
        self._codes[mid] = int(getattr(code, "value", code))  # type: ignore[call-overload]
        self._event(mid).set()

    def _on_subscribe(self, _c: object, _u: object, mid: int, codes: object, _p: object) -> None:
        self._on_ack(_c, _u, mid, codes[0], _p)  # type: ignore[index]

    def _answer(self, mid: int) -> int:
        assert self._event(mid).wait(WAIT), "the broker did not answer"
        return self._codes[mid]

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> int:
        return self._answer(self.mqttc.publish(topic, payload, qos=1, retain=retain).mid)

    def subscribe(self, topic: str) -> int:
        _, mid = self.mqttc.subscribe(topic, qos=1)
        assert mid is not None
        return self._answer(mid)

    def retained_before_marker(self, topic_filter: str, marker: str) -> list[str]:
        """Topics of the retained messages the broker sends on subscribing: they all come
        before a message published after the SUBACK."""
        assert self.subscribe(topic_filter) < 0x80
        assert self.publish(marker) < 0x80
        for _ in range(WAIT * 20):
            if any(m.topic == marker for m in self.messages):
                break
            threading.Event().wait(0.05)
        topics = [m.topic for m in self.messages]
        assert marker in topics, "the marker never arrived"
        return [m.topic for m in self.messages[: topics.index(marker)] if m.retain]


def connect(
    broker: Broker,
    port: int,
    username: str | None,
    password: str | None,
    *,
    cert: str | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, Client | None]:
    """CONNECT and wait for the CONNACK: (reason code, client if accepted)."""
    mqttc = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"t-{os.urandom(4).hex()}",
        protocol=mqtt.MQTTv5,
    )
    if port == broker.both_port:
        pem, key = broker.cert(cert) if cert else (None, None)
        mqttc.tls_set_context(
            client_context(
                broker.ctx.pki.ca_chain_pem(),
                certificate_pem=pem,
                private_key_pem=key,
                check_hostname=False,
            )
        )
    if username is not None:
        mqttc.username_pw_set(username, password)
    done = threading.Event()
    result: list[int] = []

    def on_connect(_c: object, _u: object, _f: object, code: object, _p: object) -> None:
        result.append(int(getattr(code, "value", code)))  # type: ignore[call-overload]
        done.set()

    mqttc.on_connect = on_connect
    mqttc.on_disconnect = lambda *_a: done.set()
    client = Client(mqttc)
    try:
        mqttc.connect("127.0.0.1", port, keepalive=30, bind_address=source)
    except OSError:
        return -1, None
    mqttc.loop_start()
    assert done.wait(WAIT), "no CONNACK"
    code = result[0] if result else -1
    if code != 0:
        mqttc.loop_stop()
        mqttc.disconnect()
        return code, None
    return code, client


Keep = Callable[[Client | None], Client]


@pytest.fixture
def closing() -> Iterator[Callable[[Client | None], Client]]:
    clients: list[Client] = []

    def keep(client: Client | None) -> Client:
        assert client is not None, "refused"
        clients.append(client)
        return client

    yield keep
    for client in clients:
        client.mqttc.disconnect()
        client.mqttc.loop_stop()


def _conf(work: Path, ports: tuple[int, int, int], files: dict[str, str]) -> str:
    password_port, both_port, plain_port = ports
    plugin = work / "iotfleet_auth.so"

    def block(port: int, password_file: str, extra: str = "") -> str:
        return (
            f"\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
            f"plugin {plugin}\nplugin_opt_listener {port}\n"
            f"plugin_opt_password_file {work / 'passwd'}\n"
            f"plugin_opt_local_only {HEALTH}\nplugin_opt_local_addresses 127.0.0.1\n"
            "plugin_opt_retain_topics devices/+/status\n"
            f"{extra}password_file {password_file}\nacl_file {work / 'acl'}\n"
        )

    tls = (
        f"plugin_opt_require_cn true\ncafile {files['/etc/mosquitto/certs/ca-chain.pem']}\n"
        f"certfile {files['/etc/mosquitto/certs/server.pem']}\n"
        f"keyfile {files['/etc/mosquitto/certs/server.key']}\nrequire_certificate true\n"
    )
    return (
        "per_listener_settings true\npersistence false\nlog_dest stderr\n"
        "log_type all\n"
        + block(password_port, str(work / "passwd"))
        + block(both_port, str(work / "passwd"), tls)
        + block(plain_port, str(work / "passwd-mosquitto"))
    )


def _broker_pid(conf: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(conf).encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError("no broker process")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("plugin")
    mp = pytest.MonkeyPatch()
    mp.setenv("IOTFLEET_HOME", str(home))
    mp.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    data = {
        "fleet_name": "unit",
        "ssh_hostname": "127.0.0.1",
        "fleet_devices": [{"id": "gw-1"}],
        "fleet_clients": [
            {"name": "desk", "auth": "certificate+password", "password": "generated"},
        ],
    }
    fleet = build_fleet([RawHost("localhost", ("brokers",), data)])
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    files: dict[str, str] = {}
    for managed in broker_pki_files(ctx.pki, "localhost"):
        (work / managed.staged_name).write_bytes(managed.content)
        files[managed.path] = str(work / managed.staged_name)
    (work / "iotfleet_auth.so").write_bytes(auth_plugin())
    passwords = {
        "desk": ctx.passwords["desk"].get_secret_value(),
        "wallboard": "w" * 24,
        HEALTH: "h" * 24,
        "extra": "e" * 24,
    }
    ports = (free_port(), free_port(), free_port())
    (work / "acl").write_text("".join(f"user {u}\ntopic readwrite devices/#\n" for u in passwords))
    result = Broker(ctx, work, work / "mosquitto.log", 0, *ports, passwords)
    result.write_passwords(passwords)
    # Mosquitto's own file on plain_port lacks "extra": the plugin's yes is not enough.
    mine = {u: p for u, p in passwords.items() if u != "extra"}
    (work / "passwd-mosquitto").write_text(render_password_file(mine, lambda u, p: b"m" * 12, 1000))
    with running_mosquitto(_conf(work, ports, files), work, list(ports)) as log:
        result.log = log
        result.pid = _broker_pid(work / "mosquitto.conf")
        yield result
    mp.undo()


def test_certificate_cn_must_be_the_username(broker: Broker, closing: Keep) -> None:
    desk = broker.passwords["desk"]
    code, client = connect(broker, broker.both_port, "desk", desk, cert="desk")
    assert code == 0
    closing(client)
    code, _ = connect(broker, broker.both_port, "desk", desk, cert="gw-1")
    assert code == NOT_AUTHORIZED
    assert (
        f"iotfleet_auth: refused login of 'desk' from 127.0.0.1 on listener {broker.both_port}: "
        "client certificate CN 'gw-1' is not the username"
    ) in broker.log_text()


def test_wrong_password_is_refused_and_logged_with_username_and_address(broker: Broker) -> None:
    code, _ = connect(broker, broker.password_port, "wallboard", "W" * 24, source="127.0.0.2")
    assert code == NOT_AUTHORIZED
    code, _ = connect(broker, broker.password_port, "nobody", "n" * 24, source="127.0.0.2")
    assert code == NOT_AUTHORIZED
    log = broker.log_text()
    where = f"from 127.0.0.2 on listener {broker.password_port}"
    assert f"refused login of 'wallboard' {where}: wrong password" in log
    assert f"refused login of 'nobody' {where}: unknown username" in log
    assert "W" * 24 not in log


def test_right_password_is_accepted(broker: Broker, closing: Keep) -> None:
    wallboard = broker.passwords["wallboard"]
    code, client = connect(broker, broker.password_port, "wallboard", wallboard)
    assert code == 0
    closing(client)


def test_local_only_identity_is_refused_from_another_address(broker: Broker, closing: Keep) -> None:
    health = broker.passwords[HEALTH]
    code, client = connect(broker, broker.password_port, HEALTH, health)
    assert code == 0
    closing(client)
    code, _ = connect(broker, broker.password_port, HEALTH, health, source="127.0.0.2")
    assert code == NOT_AUTHORIZED
    assert (
        f"refused login of '{HEALTH}' from 127.0.0.2 on listener {broker.password_port}: "
        "local-only identity from a remote address"
    ) in broker.log_text()


def test_retained_only_on_status_topics(broker: Broker, closing: Keep) -> None:
    wallboard = broker.passwords["wallboard"]
    publisher = closing(connect(broker, broker.password_port, "wallboard", wallboard)[1])
    assert publisher.publish("devices/gw-1/telemetry/t1", b"big", retain=True) == NOT_AUTHORIZED
    # 0x10 "no matching subscribers" is a success too.
    assert publisher.publish("devices/gw-1/status", b"online", retain=True) < 0x80
    assert publisher.publish("devices/gw-1/telemetry/t1", b"live") < 0x80  # not retained: fine
    reader = closing(connect(broker, broker.password_port, "wallboard", wallboard)[1])
    retained = reader.retained_before_marker("devices/gw-1/#", "devices/gw-1/marker")
    assert retained == ["devices/gw-1/status"]


def test_mosquittos_own_password_check_still_runs(broker: Broker) -> None:
    """The plugin defers on success: a user missing from Mosquitto's own file is refused."""
    extra = broker.passwords["extra"]
    code, _ = connect(broker, broker.plain_port, "extra", extra)
    assert code == NOT_AUTHORIZED
    assert f"refused login of 'extra' from 127.0.0.1 on listener {broker.plain_port}" not in (
        broker.log_text()
    )


def test_reload_picks_up_a_changed_password_file(broker: Broker, closing: Keep) -> None:
    old = broker.passwords["wallboard"]
    new = "n" * 24
    broker.write_passwords({**broker.passwords, "wallboard": new})
    reloads = broker.log_text().count("Reloading config")
    os.kill(broker.pid, signal.SIGHUP)
    # The broker logs the reload and finishes it before it reads the next packet; then the
    # old password is refused by the plugin (it logs why) and the new one passes both checks.
    for _ in range(WAIT * 20):
        if broker.log_text().count("Reloading config") > reloads:
            break
        threading.Event().wait(0.05)
    code, _ = connect(broker, broker.password_port, "wallboard", old, source="127.0.0.3")
    assert code == NOT_AUTHORIZED
    assert (
        f"refused login of 'wallboard' from 127.0.0.3 on listener {broker.password_port}: "
        "wrong password"
    ) in broker.log_text()
    code, client = connect(broker, broker.password_port, "wallboard", new)
    assert code == 0
    closing(client)
    broker.write_passwords(broker.passwords)
    os.kill(broker.pid, signal.SIGHUP)
