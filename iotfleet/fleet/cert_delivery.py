"""Deliver renewed device certificates over MQTT, and see which certificate each gateway uses.

Run on the control machine (the rollout's delivery step, `iotfleet pki deliver`). For each
broker, iotfleet's delivery identity publishes each device's current certificate with its chain
to ``certificate_topic(device)`` (retained, QoS 1: a gateway offline now finds it when it
returns) and reads the device's retained status, whose ``cert_serial`` says which certificate
it connects with. Both go to the PKI's delivery ledger; the next reconcile revokes a renewed
device's old certificate once the ledger shows it using the new one.

The network loop is driven in the caller's thread (no paho thread): pyinfra runs operations in
gevent greenlets.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from iotfleet.check.tls_context import client_context
from iotfleet.device.contract import CertificateUpdate, GatewayStatus, certificate_topic
from iotfleet.fleet.context import FleetContext
from iotfleet.model import Broker
from iotfleet.model.addresses import broker_dns_names, broker_ip_addresses
from iotfleet.model.own_identities import DELIVERY_IDENTITY
from iotfleet.pki.delivery import Delivery, read_ledger, record_observations
from iotfleet.pki.layout import serial_hex

_FIRST_FAILURE = 0x80


class DeliveryError(RuntimeError):
    """A delivery could not run at all (no usable listener, no delivery identity yet)."""


@dataclass
class DeviceDelivery:
    """What happened for one device."""

    device: str
    serial: str  # the certificate delivered (current in the PKI)
    brokers: list[str] = field(default_factory=list)  # brokers that acknowledged it
    failures: list[str] = field(default_factory=list)  # "broker: why"
    in_use: str | None = None  # serial the gateway reported, if it reported one
    online: bool = False

    @property
    def delivered(self) -> bool:
        return bool(self.brokers)

    @property
    def switched(self) -> bool:
        return self.in_use == self.serial


def pending_deliveries(ctx: FleetContext) -> list[str]:
    """Devices renewed over the air whose current certificate was not delivered yet (pure
    read: the rollout decides at load time whether its delivery step has work)."""
    store = ctx.pki
    ledger = read_ledger(ctx.pki_settings.state_dir)
    retiring = {record.name for record in store.records() if record.status == "retiring"}
    pending: list[str] = []
    for device in ctx.fleet.active_devices:
        current = store.record(device.id)
        if device.id not in retiring or current is None or current.status != "valid":
            continue
        if ledger.get(device.id, Delivery()).delivered != current.serial:
            pending.append(device.id)
    return pending


def delivery_listener(broker: Broker) -> tuple[str, int]:
    """Where the delivery identity connects: the name the broker's certificate carries and its
    first TLS listener that takes a client certificate alone."""
    names = broker_dns_names(broker) or broker_ip_addresses(broker)
    host = names[0] if names else broker.ssh_hostname
    for listener in broker.mosquitto.listeners:
        if listener.tls and listener.protocol == "mqtt" and listener.auth == "certificate":
            return host, listener.port
    raise DeliveryError(
        f"broker {broker.name}: no TLS listener with auth: certificate (mosquitto_listeners) "
        "for iotfleet's delivery identity"
    )


def deliver_certificates(
    ctx: FleetContext,
    devices: Sequence[str] | None = None,
    *,
    wait: float = 10.0,
    timeout: float = 10.0,
    targets: dict[str, tuple[str, int]] | None = None,
    now: datetime | None = None,
) -> list[DeviceDelivery]:
    """Publish the current certificate of ``devices`` (default: ``pending_deliveries``) on every
    broker each may use; wait up to ``wait`` seconds for the online ones to report it in use.

    Args:
        ctx: the fleet (its PKI must have issued the delivery identity).
        devices: device ids; None means those renewed and not delivered yet.
        wait: seconds to wait, per broker, for online gateways to switch (0: do not wait).
        timeout: seconds for a connection or an acknowledgement.
        targets: ``{broker name: (host, port)}`` overrides (tests on a local broker).
        now: when to record the observations (default: the clock).
    """
    store = ctx.pki
    chosen = pending_deliveries(ctx) if devices is None else list(devices)
    known = {device.id for device in ctx.fleet.active_devices}
    unknown = [d for d in chosen if d not in known]
    if unknown:
        raise DeliveryError(f"not an active device of fleet {ctx.fleet.name}: {', '.join(unknown)}")
    chain = store.ca_chain_pem().decode()
    results: dict[str, DeviceDelivery] = {}
    payloads: dict[str, bytes] = {}
    for device in chosen:
        record = store.record(device)
        assert record is not None and record.status == "valid"
        results[device] = DeviceDelivery(device, record.serial_hex)
        payloads[device] = CertificateUpdate(
            device=device,
            serial=record.serial_hex,
            certificate=store.certificate_pem(device).decode(),
            chain=chain,
        ).to_payload()
    if chosen:
        identity = (
            store.certificate_pem(DELIVERY_IDENTITY),
            store.private_key_pem(DELIVERY_IDENTITY),
        )
        for broker in ctx.fleet.brokers:
            allowed = ctx.fleet.users_of(broker.name)
            here = [d for d in chosen if d in allowed]
            if not here:
                continue
            host, port = (targets or {}).get(broker.name) or delivery_listener(broker)
            status_topics = {
                f"{ctx.fleet.topic_prefix(ctx.fleet.device(d))}/status": d for d in here
            }
            _deliver_on(
                broker.name, host, port, chain.encode(), identity, here, payloads,
                status_topics, results, wait, timeout,
            )  # fmt: skip
    record_observations(
        ctx.pki_settings.state_dir,
        delivered={d: int(r.serial, 16) for d, r in results.items() if r.delivered},
        in_use={d: int(r.in_use, 16) for d, r in results.items() if r.in_use},
        now=now or datetime.now(UTC).replace(microsecond=0),
    )
    return [results[d] for d in chosen]


class MqttLink:
    """One MQTT 5 connection whose loop runs in the caller's thread."""

    def __init__(self, host: str, port: int, ca: bytes, identity: tuple[bytes, bytes]) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=DELIVERY_IDENTITY,
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set_context(
            client_context(ca, certificate_pem=identity[0], private_key_pem=identity[1])
        )
        self.acks: dict[int, int] = {}
        self.connack: ReasonCode | None = None
        self.statuses: dict[str, bytes] = {}
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
    ) -> None:
        self.connack = reason

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        self.acks[mid] = reason.value

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.statuses[message.topic] = bytes(message.payload)

    def open(self, timeout: float) -> str | None:
        """Connect and wait for CONNACK; None when connected, else why not."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            return f"cannot connect to {self.host}:{self.port}: {exc}"
        if not self.pump_until(lambda: self.connack is not None, timeout):
            return "no CONNACK"
        if self.connack is not None and self.connack.is_failure:
            return f"refused ({self.connack})"
        return None

    def pump_until(self, done: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            if time.monotonic() > deadline:
                return False
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                time.sleep(0.05)
        return True


def _deliver_on(
    broker: str,
    host: str,
    port: int,
    ca: bytes,
    identity: tuple[bytes, bytes],
    devices: Iterable[str],
    payloads: dict[str, bytes],
    status_topics: dict[str, str],
    results: dict[str, DeviceDelivery],
    wait: float,
    timeout: float,
) -> None:
    devices = list(devices)
    link = MqttLink(host, port, ca, identity)
    try:
        link.client.connect(host, port, keepalive=30)
    except (ssl.SSLError, OSError) as exc:
        for device in devices:
            results[device].failures.append(f"{broker}: cannot connect to {host}:{port}: {exc}")
        return
    try:
        if not link.pump_until(lambda: link.connack is not None, timeout) or (
            link.connack is not None and link.connack.is_failure
        ):
            for device in devices:
                results[device].failures.append(f"{broker}: refused ({link.connack})")
            return
        for topic in status_topics:
            link.client.subscribe(topic, qos=1)
        mids = {
            device: link.client.publish(
                certificate_topic(device), payloads[device], qos=1, retain=True
            ).mid
            for device in devices
        }
        link.pump_until(lambda: all(mid in link.acks for mid in mids.values()), timeout)
        for device, mid in mids.items():
            code = link.acks.get(mid)
            if code is not None and code < _FIRST_FAILURE:
                results[device].brokers.append(broker)
            else:
                why = "no PUBACK" if code is None else f"PUBACK 0x{code:02x}"
                results[device].failures.append(f"{broker}: {why}")

        def switched() -> bool:
            _read_statuses(link, status_topics, results)
            return all(results[d].switched or not results[d].online for d in devices)

        link.pump_until(lambda: False, min(0.5, wait))  # retained statuses arrive first
        link.pump_until(switched, wait)
        _read_statuses(link, status_topics, results)
    finally:
        link.client.disconnect()


def _read_statuses(
    link: MqttLink, status_topics: dict[str, str], results: dict[str, DeviceDelivery]
) -> None:
    """Merge this broker's statuses: a gateway is online if any broker says so, and the serial
    it uses is the one it reported while online (a broker it left may hold an older one)."""
    for topic, payload in link.statuses.items():
        device = status_topics.get(topic)
        if device is None or results[device].switched:
            continue
        try:
            status = GatewayStatus.model_validate_json(payload)
        except ValidationError:
            continue  # a command reply, not presence
        if status.state != "online":
            continue
        results[device].online = True
        if status.cert_serial:
            results[device].in_use = status.cert_serial


def serial_text(serial: int | None) -> str:
    return "-" if serial is None else serial_hex(serial)


@dataclass
class GatewaySeen:
    """A gateway as its retained status shows it (``iotfleet gateway status``)."""

    device: str
    state: str = "unknown"  # online, offline, or unknown (never published a status)
    brokers: list[str] = field(default_factory=list)  # where it is online (or last said so)
    cert_serial: str | None = None
    firmware: str | None = None
    since: datetime | None = None  # online: since when; offline: when it said goodbye, if it did
    last_seen: datetime | None = None  # the latest moment it is known to have been up


def gateway_statuses(
    ctx: FleetContext,
    *,
    settle: float = 1.5,
    timeout: float = 10.0,
    targets: dict[str, tuple[str, int]] | None = None,
) -> tuple[list[GatewaySeen], list[str]]:
    """Every active device's retained status on every broker it may use, read with iotfleet's
    delivery identity (it may read status topics and nothing else of a device). Returns the
    gateways and the brokers that could not be read ("broker: why")."""
    store = ctx.pki
    identity = (store.certificate_pem(DELIVERY_IDENTITY), store.private_key_pem(DELIVERY_IDENTITY))
    ca = store.ca_chain_pem()
    seen = {d.id: GatewaySeen(d.id) for d in ctx.fleet.active_devices}
    problems: list[str] = []
    for broker in ctx.fleet.brokers:
        allowed = ctx.fleet.users_of(broker.name)
        topics = {
            f"{ctx.fleet.topic_prefix(d)}/status": d.id
            for d in ctx.fleet.active_devices
            if d.id in allowed
        }
        if not topics:
            continue
        host, port = (targets or {}).get(broker.name) or delivery_listener(broker)
        link = MqttLink(host, port, ca, identity)
        problem = link.open(timeout)
        if problem is not None:
            problems.append(f"{broker.name}: {problem}")
            link.client.disconnect()
            continue
        try:
            for topic in topics:
                link.client.subscribe(topic, qos=1)
            link.pump_until(lambda: False, settle)  # retained messages come right away
        finally:
            link.client.disconnect()
        for topic, payload in link.statuses.items():
            device = topics.get(topic)
            if device is None:
                continue
            try:
                status = GatewayStatus.model_validate_json(payload)
            except ValidationError:
                continue
            _merge(seen[device], broker.name, status)
    return list(seen.values()), problems


def _merge(gateway: GatewaySeen, broker: str, status: GatewayStatus) -> None:
    """Online anywhere wins; otherwise the status of the broker that saw it last. An offline
    status is its will or its goodbye, which say when it was last seen (``last_seen``)."""
    if status.state == "online":
        if gateway.state != "online":
            gateway.brokers, gateway.since = [], None
        gateway.state = "online"
        gateway.brokers.append(broker)
    elif gateway.state == "online":
        return
    else:
        seen = status.last_seen
        if gateway.state == "offline" and (
            seen is None or (gateway.last_seen is not None and seen <= gateway.last_seen)
        ):
            return
        gateway.state, gateway.brokers, gateway.since = "offline", [broker], None
    gateway.cert_serial = status.cert_serial or gateway.cert_serial
    gateway.firmware = status.firmware or gateway.firmware
    gateway.since = status.since or gateway.since
    gateway.last_seen = max(
        (t for t in (gateway.last_seen, status.last_seen) if t is not None), default=None
    )
