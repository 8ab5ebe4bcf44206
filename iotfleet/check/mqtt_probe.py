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
from collections.abc import Callable, Iterator
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

    def __init__(self, message: str, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage


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
    # Where a refusal happened: "tls" (handshake failed or the broker closed the connection
    # before any CONNACK, e.g. a TLS alert over an unacceptable client certificate),
    # "connack" (TLS was accepted, the broker refused the MQTT credentials), "network".
    stage: str = ""


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
    """A connected MQTT 5 client; methods return the broker's reason codes.

    With ``pump`` (a probe session without reconnects) there is no network thread: waiting
    for an answer drives the client's loop in the caller's thread.
    """

    def __init__(
        self, client: mqtt.Client, timeout: float, pump: Callable[[], None] | None = None
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._pump = pump
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

    def _wait(self, waiter: _Waiter) -> object:
        if self._pump is None:
            return waiter.wait(self._timeout)
        return _pumped_wait(waiter, self._pump, self._timeout)

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

    def publish(
        self, topic: str, payload: bytes = b"iotfleet probe", qos: int = 1, retain: bool = False
    ) -> int:
        """Reason code of the PUBACK: below 0x80 accepted, 0x87 not authorized."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return _as_code(self._wait(self._waiter(info.mid)))

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """Granted QoS (0..2) or a failure code (>= 0x80)."""
        _, mid = self._client.subscribe(topic, qos=qos)
        assert mid is not None
        return _as_code(self._wait(self._waiter(mid)))

    def messages(self, topic_prefix: str = "") -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self._messages if m.topic.startswith(topic_prefix)]

    def wait_for_message(self, topic_prefix: str, timeout: float) -> bool:
        """True as soon as a message under ``topic_prefix`` arrived; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.messages(topic_prefix):
                return True
            self.idle(0.05)
        return bool(self.messages(topic_prefix))

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass while messages keep arriving."""
        if self._pump is None:
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump()


def _pumped_wait(waiter: _Waiter, pump: Callable[[], None], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while not waiter.event.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError
        pump()
    return waiter.value


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
            reconnect=False,
        ):
            return ConnectResult(True, "CONNACK: success", "accepted")
    except ProbeError as exc:
        return ConnectResult(False, str(exc), exc.stage)


@contextmanager
def session(
    target: Target,
    identity: Identity,
    *,
    client_id: str | None = None,
    tls_maximum: ssl.TLSVersion | None = None,
    check_hostname: bool = True,
    timeout: float = 10,
    reconnect: bool = True,
) -> Iterator[Session]:
    """A connected session; raises ``ProbeError`` saying why if the broker refuses.

    ``reconnect=False`` runs no network thread and never reconnects: the caller's waits
    drive the client, and a refused probe ends at once (no reconnect back-off).
    """
    client = _client(target, identity, client_id, tls_maximum, check_hostname)
    connected = _Waiter()
    socket_errors: list[str] = []

    def on_connect(
        _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
    ) -> None:
        connected.set(reason)

    def on_disconnect(
        _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if not connected.event.is_set():
            connected.set(_ClosedBeforeConnack(reason))
        else:
            probe.disconnections += 1

    def on_log(_c: mqtt.Client, _u: object, level: int, message: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in message:
            socket_errors.append(message)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_log = on_log

    def pump() -> None:
        if client.loop(timeout=0.02) != mqtt.MQTT_ERR_SUCCESS:
            time.sleep(0.02)  # connection gone: do not spin

    probe = Session(client, timeout, None if reconnect else pump)
    try:
        client.connect(target.host, target.port, keepalive=30)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise ProbeError(f"TLS handshake failed: {exc}", "tls") from None
    except OSError as exc:
        raise ProbeError(f"connection failed: {exc}", "network") from None
    if reconnect:
        client.loop_start()
    try:
        try:
            reason = (
                connected.wait(timeout) if reconnect else _pumped_wait(connected, pump, timeout)
            )
        except TimeoutError:
            raise ProbeError("no CONNACK (connection closed or timed out)", "tls") from None
        if isinstance(reason, _ClosedBeforeConnack):
            why = socket_errors[-1] if socket_errors else str(reason.reason)
            raise ProbeError(f"connection closed before CONNACK ({why})", "tls")
        if not isinstance(reason, ReasonCode) or reason.is_failure:
            raise ProbeError(f"CONNACK refused: {reason}", "connack")
        if not client.is_connected():
            raise ProbeError("disconnected right after CONNACK", "connack")
        yield probe
    finally:
        client.disconnect()
        if reconnect:
            client.loop_stop()


@dataclass(frozen=True)
class _ClosedBeforeConnack:
    """The connection ended before any CONNACK (a TLS alert, a reset)."""

    reason: ReasonCode
