"""MQTT probes against a broker listener: who gets in, and what they may publish or read.

MQTT 5 is used because a broker then answers with reason codes (e.g. 0x87 "not authorized" in
PUBACK) instead of silently dropping what an ACL denies. Mosquitto grants subscriptions its ACL
forbids and filters at delivery instead, so whether a client can *read* a topic is shown by
what it receives, never by its SUBACK.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from iotfleet.check.tls_context import client_context

NOT_AUTHORIZED = 0x87
FIRST_FAILURE_CODE = 0x80  # MQTT 5: reason codes below are successes (0x10 = no subscribers)


def succeeded(reason_code: int) -> bool:
    """True if a PUBACK/SUBACK reason code means the broker accepted the request."""
    return reason_code < FIRST_FAILURE_CODE


class ProbeError(Exception):
    """The probe could not get as far as it needed (e.g. a valid client was refused)."""


@dataclass(frozen=True)
class Target:
    """A broker listener as clients see it."""

    host: str  # the name (or address) clients use; the certificate must carry it
    port: int
    ca_pem: bytes
    websockets: bool = False


@dataclass(frozen=True)
class Identity:
    """What a client presents; every part optional (anonymous is all None)."""

    certificate_pem: bytes | None = None
    private_key_pem: bytes | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ConnectResult:
    accepted: bool
    detail: str


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: object = None

    def set(self, value: object) -> None:
        self.value = value
        self.event.set()

    def wait(self, timeout: float) -> object:
        if not self.event.wait(timeout):
            raise TimeoutError
        return self.value


def _client(
    target: Target,
    identity: Identity,
    client_id: str | None,
    tls_maximum: ssl.TLSVersion | None,
    check_hostname: bool,
) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or f"iotfleet-probe-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        transport="websockets" if target.websockets else "tcp",
    )
    client.tls_set_context(
        client_context(
            target.ca_pem,
            certificate_pem=identity.certificate_pem,
            private_key_pem=identity.private_key_pem,
            maximum=tls_maximum,
            check_hostname=check_hostname,
        )
    )
    if identity.username is not None:
        client.username_pw_set(identity.username, identity.password)
    return client


class Session:
    """A connected MQTT 5 client; methods return the broker's reason codes."""

    def __init__(self, client: mqtt.Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._acks: dict[int, _Waiter] = {}
        self._messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        # Times the broker dropped this session after it was up (paho reconnects by itself).
        self.disconnections = 0
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    def _waiter(self, mid: int) -> _Waiter:
        with self._lock:
            return self._acks.setdefault(mid, _Waiter())

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        self._waiter(mid).set(reason.value)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, reasons: list[ReasonCode], _p: Properties
    ) -> None:
        self._waiter(mid).set(reasons[0].value)

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def publish(self, topic: str, payload: bytes = b"iotfleet probe", qos: int = 1) -> int:
        """Reason code of the PUBACK: below 0x80 accepted, 0x87 not authorized."""
        info = self._client.publish(topic, payload, qos=qos)
        return _as_code(self._waiter(info.mid).wait(self._timeout))

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """Granted QoS (0..2) or a failure code (>= 0x80)."""
        _, mid = self._client.subscribe(topic, qos=qos)
        assert mid is not None
        return _as_code(self._waiter(mid).wait(self._timeout))

    def messages(self, topic_prefix: str = "") -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self._messages if m.topic.startswith(topic_prefix)]

    def wait_for_message(self, topic_prefix: str, timeout: float) -> bool:
        """True as soon as a message under ``topic_prefix`` arrived; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.messages(topic_prefix):
                return True
            time.sleep(0.05)
        return bool(self.messages(topic_prefix))


def _as_code(value: object) -> int:
    assert isinstance(value, int)
    return value


def try_connect(
    target: Target,
    identity: Identity,
    *,
    client_id: str | None = None,
    tls_maximum: ssl.TLSVersion | None = None,
    check_hostname: bool = True,
    timeout: float = 10,
) -> ConnectResult:
    """Whether the broker accepts this client: TLS handshake, then CONNACK."""
    try:
        with session(
            target,
            identity,
            client_id=client_id,
            tls_maximum=tls_maximum,
            check_hostname=check_hostname,
            timeout=timeout,
        ):
            return ConnectResult(True, "CONNACK: success")
    except ProbeError as exc:
        return ConnectResult(False, str(exc))


@contextmanager
def session(
    target: Target,
    identity: Identity,
    *,
    client_id: str | None = None,
    tls_maximum: ssl.TLSVersion | None = None,
    check_hostname: bool = True,
    timeout: float = 10,
) -> Iterator[Session]:
    """A connected session; raises ``ProbeError`` saying why if the broker refuses."""
    client = _client(target, identity, client_id, tls_maximum, check_hostname)
    connected = _Waiter()

    def on_connect(
        _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
    ) -> None:
        connected.set(reason)

    def on_disconnect(
        _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if not connected.event.is_set():
            connected.set(reason)
        else:
            probe.disconnections += 1

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    probe = Session(client, timeout)
    try:
        client.connect(target.host, target.port, keepalive=30)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise ProbeError(f"TLS handshake failed: {exc}") from None
    except OSError as exc:
        raise ProbeError(f"connection failed: {exc}") from None
    client.loop_start()
    try:
        try:
            reason = connected.wait(timeout)
        except TimeoutError:
            raise ProbeError("no CONNACK (connection closed or timed out)") from None
        if not isinstance(reason, ReasonCode) or reason.is_failure:
            raise ProbeError(f"CONNACK refused: {reason}")
        if not client.is_connected():
            raise ProbeError("disconnected right after CONNACK")
        yield probe
    finally:
        client.disconnect()
        client.loop_stop()
