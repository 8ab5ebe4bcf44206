"""A gateway in software: what the reference firmware does, with the same files and topics.

It connects to the brokers named in ``/iotfleet.json`` in turn, over TLS with the flashed client
certificate; announces itself on its status topic (retained, with an "offline" will), publishes
telemetry every ``telemetry_interval`` seconds, answers commands (``ping``, ``telemetry``,
``restart``) on the status topic, and reconnects with exponential backoff when the broker goes.
MQTT 5 is used so the broker's verdicts (e.g. 0x87 "not authorized") are visible.

Failover (``iotfleet.gateway.failover``): when its broker dies it goes on to the next one of the
list, round the list; from a later broker it looks every ``return_interval`` seconds whether an
earlier one listens again and moves back to it. Each connection is a clean session: telemetry in
flight when a broker dies is lost with it (at most the readings not yet acknowledged); a move
back waits for the outstanding acknowledgements before it leaves.

Certificate renewal over the air: it listens on its certificate topic (retained, so a renewal
published while it was offline is waiting when it comes back), checks the certificate
(``iotfleet.gateway.renewal``), stores it in its flash (``/client.pem``, power-cut safe:
``iotfleet.gateway.identity``), reconnects with it and reports its serial in the retained online
status. ``GatewaySimulator.from_flash`` boots like the board: a switch a power cut left half done
is finished or undone before the contract is read.

Re-key over the air: a request on its re-key topic makes it generate a new key (kept in flash
as ``/client.key.new``, the old key stays in use) and publish the CSR on its own CSR topic
(retained); the certificate for the new key arrives like a renewal, and the gateway switches to
the new key and certificate together (``iotfleet.gateway.rekey``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from iotfleet.device.contract import (
    PENDING_KEY_FILE,
    REKEY_FILE,
    Bundle,
    ContractError,
    GatewayStatus,
    RekeyRequest,
    certificate_topic,
    csr_topic,
    rekey_topic,
)
from iotfleet.device.littlefs_image import FileStep, Rename
from iotfleet.gateway.backoff import Backoff
from iotfleet.gateway.failover import RETURN_INTERVAL, BrokerOrder, listens
from iotfleet.gateway.flashfile import (
    GatewayError,
    apply_flash_steps,
    read_bundle,
    read_flash_files,
    write_flash_files,
)
from iotfleet.gateway.identity import recover_identity, switch_steps
from iotfleet.gateway.rekey import answered_request, csr_message, new_key_pem, rekey_state
from iotfleet.gateway.renewal import CertificateRejectedError, checked_update, serial_of
from iotfleet.gateway.tls import gateway_tls_context

Log = Callable[[str], None]
NOT_AUTHORIZED = 0x87
_MAX_PENDING_ACKS = 256
FIRMWARE = "iotfleet-simulator/1"
_CERTIFICATE = "\x00certificate"  # internal queue key: never a command name (MQTT has no NUL)
_REKEY = "\x00rekey"


@dataclass
class SimulatorStats:
    """What the gateway has done so far (read by tests and printed by the CLI)."""

    connects: int = 0
    connect_failures: int = 0
    telemetry_sent: int = 0
    commands_handled: int = 0
    certificates_installed: int = 0
    certificates_rejected: int = 0
    csrs_sent: int = 0  # re-key requests answered with a CSR
    keys_replaced: int = 0  # switched to a new key (its certificate arrived)
    moves_back: int = 0  # left a later broker for an earlier one that listened again
    last_error: str = ""


class _ConnectFailedError(Exception):
    pass


class GatewaySimulator:
    """One simulated gateway, from its ``Bundle`` (see ``read_bundle``)."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        telemetry_interval: float | None = None,
        broker: tuple[str, int] | None = None,
        brokers: list[tuple[str, int]] | None = None,
        return_interval: float = RETURN_INTERVAL,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        log: Log | None = None,
        flash_file: Path | None = None,
        layout: str = "4M2M",
    ) -> None:
        config = bundle.config
        self.bundle = bundle
        self.device_id = config.device_id
        self.topics = config.topics
        self.interval = telemetry_interval or float(config.telemetry_interval)
        # Hosts to try in order; ``broker`` or ``brokers`` override them (e.g. test brokers on
        # other ports, or the addresses of the image's names).
        if broker is not None:
            brokers = [broker]
        self.targets = brokers or [(h, config.mqtt_port) for h in config.mqtt_hosts]
        self.order = BrokerOrder(len(self.targets))
        self.return_interval = return_interval
        self.backoff = backoff or Backoff(config.backoff_initial, config.backoff_max)
        self.connect_timeout = connect_timeout
        self.stats = SimulatorStats()
        self._log = log or (lambda _line: None)
        # Where a renewed certificate is stored (None: kept in memory only, lost at "reboot").
        self.flash_file = flash_file
        self.layout = layout
        self.certificate_topic = certificate_topic(self.device_id)
        self.rekey_topic = rekey_topic(self.device_id)
        self.csr_topic = csr_topic(self.device_id)
        # A re-key in progress survives a reboot: its key and request id live in the flash.
        self._pending_key: bytes | None = None
        self._answered: str | None = None
        if flash_file is not None:
            files = read_flash_files(flash_file, layout)
            self._pending_key = files.get(PENDING_KEY_FILE) or None
            self._answered = answered_request(files.get(REKEY_FILE))
        self._tls = gateway_tls_context(
            bundle.ca_chain_pem, bundle.certificate_pem, bundle.private_key_pem
        )
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._client: mqtt.Client | None = None
        self._commands: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: OrderedDict[int, tuple[threading.Event, list[int]]] = OrderedDict()
        self._acks_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._seq = 0
        self._switching = False
        self._moving = False  # leaving for a preferred broker: not going offline either
        self._restarting = False
        self._power_cut = False
        self._broker: tuple[str, int] | None = None
        self._in_flight: list[mqtt.MQTTMessageInfo] = []

    @classmethod
    def from_flash(cls, flash_file: Path, layout: str = "4M2M", **options: Any) -> GatewaySimulator:
        """Boot like the board: finish or undo an identity switch a power cut left half done
        (``iotfleet.gateway.identity``), read the contract from the flash, and store renewed
        certificates and re-key state there. ``options``: as for the constructor."""
        recovered = recover_identity(flash_file, layout)
        simulator = cls(
            read_bundle(flash_file, layout), flash_file=flash_file, layout=layout, **options
        )
        for step in recovered:
            simulator._log(f"boot: a switch was cut short by a power cut: {_described(step)}")
        return simulator

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> GatewaySimulator:
        """Run in a background thread until ``stop()``."""
        self._thread = threading.Thread(target=self.run, daemon=True, name=self.device_id)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def cut_power(self, timeout: float = 10.0) -> None:
        """Like pulling the plug: the connection drops with no goodbye, so the broker publishes
        the gateway's will, and the gateway stays down (what the fleet sees of a dead board)."""
        self._power_cut = True
        self._stop.set()
        client = self._client
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT, no TLS close_notify
        self.stop(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> tuple[str, int] | None:
        """The broker this gateway is connected to (None: none)."""
        return self._broker if self.connected else None

    @property
    def cert_serial(self) -> str:
        """Serial (hex) of the certificate this gateway connects with."""
        return serial_of(self.bundle.certificate_pem)

    def run(self, *, max_telemetry: int | None = None) -> SimulatorStats:
        """Connect, serve, fail over and reconnect with backoff, until stopped (or
        ``max_telemetry`` sent)."""
        while not self._stop.is_set():
            host, port = self.targets[self.order.current]
            returning = self.order.left is not None
            try:
                self._session(host, port, max_telemetry)
            except _ConnectFailedError as exc:
                self.stats.connect_failures += 1
                self.stats.last_error = str(exc)
                self._log(f"cannot connect to {host}:{port}: {exc}")
                self.order.failed()  # the next broker, or back to the one a move back left
                if returning:
                    continue  # it was up a moment ago: at once, no back-off
            else:
                if self._stop.is_set():
                    break
                if self._switching:
                    self._switching = False
                    continue  # a new certificate: the same broker again, at once, no back-off
                if self._moving:
                    self._moving = False
                    continue  # to the preferred broker, at once
                if self._restarting:
                    self._restarting = False
                    self.order = BrokerOrder(len(self.targets))  # a reboot: the first again
                else:
                    self.order.failed()  # the connection was lost: the next broker
            if self._stop.is_set():
                break
            delay = self.backoff.next_delay()
            self._log(f"reconnecting in {delay:.1f} s")
            self._stop.wait(delay)
        return self.stats

    # -- one connection ------------------------------------------------------------------------

    def _session(self, host: str, port: int, max_telemetry: int | None) -> None:
        # One time for the session: the online status's ``since`` and the will's ``last_online``
        # (the will is fixed at connect time, so it carries what the fleet should know of it).
        online_at = datetime.now(UTC).replace(microsecond=0)
        client = self._new_client(online_at)
        connack: queue.Queue[ReasonCode] = queue.Queue()
        gone = threading.Event()

        def on_connect(
            _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
        ) -> None:
            connack.put(reason)

        def on_disconnect(
            _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
        ) -> None:
            gone.set()
            self._connected.clear()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        try:
            client.connect(host, port, keepalive=self.bundle.config.keepalive)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise _ConnectFailedError(f"TLS handshake failed: {exc}") from None
        except OSError as exc:
            raise _ConnectFailedError(f"{exc.strerror or exc}") from None
        client.loop_start()
        try:
            try:
                reason = connack.get(timeout=self.connect_timeout)
            except queue.Empty:
                raise _ConnectFailedError("no CONNACK: the broker closed the connection") from None
            if reason.is_failure:
                raise _ConnectFailedError(f"broker refused the connection: {reason}")
            self._online(client, host, port, online_at)
            self._serve(client, gone, max_telemetry)
        finally:
            if not gone.is_set() and not self._power_cut:
                self._drain()  # leaving on purpose: the readings in flight are acknowledged
                # A switch or a move is not going offline; a power cut leaves it to the will.
                if not self._switching and not self._moving:
                    self._offline(client, online_at)
            client.disconnect()
            client.loop_stop()
            self._client = None
            self._broker = None
            self._in_flight = []
            self._connected.clear()

    def _new_client(self, online_at: datetime) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv5,
        )
        client.tls_set_context(self._tls)
        config = self.bundle.config
        if config.mqtt_username is not None and self.bundle.mqtt_password is not None:
            client.username_pw_set(
                config.mqtt_username, self.bundle.mqtt_password.get_secret_value()
            )
        will = self._status("offline", last_online=online_at)
        client.will_set(self.topics.status, will, qos=1, retain=True)
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.connect_timeout = self.connect_timeout
        return client

    def _online(self, client: mqtt.Client, host: str, port: int, online_at: datetime) -> None:
        self._client = client
        self._broker = (host, port)
        self.order.connected()
        self.backoff.reset()
        self.stats.connects += 1
        client.subscribe(f"{self.topics.commands}/#", qos=1)
        client.subscribe(self.certificate_topic, qos=1)
        client.subscribe(self.rekey_topic, qos=1)
        status = self._status("online", since=online_at)
        client.publish(self.topics.status, status, qos=1, retain=True)
        self._connected.set()
        self._log(f"connected to {host}:{port} as {self.device_id}")

    def _drain(self, timeout: float = 2.0) -> None:
        """Wait (a little) for the broker to acknowledge the telemetry in flight."""
        deadline = time.monotonic() + timeout
        for info in self._in_flight:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))

    def _preferred_listening(self) -> int | None:
        """The first broker before the current one that accepts a connection again."""
        for index in self.order.preferred():
            if listens(*self.targets[index]):
                return index
        return None

    def _offline(self, client: mqtt.Client, online_at: datetime) -> None:
        """A clean goodbye (the will only covers a lost connection): it knows when it leaves."""
        goodbye = self._status("offline", since=datetime.now(UTC), last_online=online_at)
        info = client.publish(self.topics.status, goodbye, qos=1, retain=True)
        info.wait_for_publish(timeout=2)

    def _status(
        self,
        state: Literal["online", "offline"],
        *,
        since: datetime | None = None,
        last_online: datetime | None = None,
    ) -> str:
        """Presence on the status topic (``GatewayStatus``), with the certificate in use."""
        status = GatewayStatus(
            state=state,
            cert_serial=self.cert_serial,
            firmware=FIRMWARE,
            since=since.replace(microsecond=0) if since else None,
            last_online=last_online,
        )
        return status.model_dump_json(exclude_none=True)

    def _serve(self, client: mqtt.Client, gone: threading.Event, max_telemetry: int | None) -> None:
        next_reading = time.monotonic()
        next_look = next_reading + self.return_interval
        while not self._stop.is_set() and not gone.is_set():
            now = time.monotonic()
            if now >= next_look and self.order.preferred():
                next_look = now + self.return_interval
                index = self._preferred_listening()
                if index is not None:
                    host, port = self.targets[index]
                    self._log(f"{host}:{port} listens again: moving back to it")
                    self.order.move_back(index)
                    self.stats.moves_back += 1
                    self._moving = True
                    return
                continue
            if now >= next_reading:
                self._publish_telemetry(client)
                next_reading = now + self.interval
                if max_telemetry is not None and self.stats.telemetry_sent >= max_telemetry:
                    self._stop.set()
                    return
            try:
                name, payload = self._commands.get(timeout=min(0.2, max(0.0, next_reading - now)))
            except queue.Empty:
                continue
            if name == _CERTIFICATE:
                if self._install_certificate(client, payload):
                    return  # reconnect at once with the new certificate
                continue
            if name == _REKEY:
                self._answer_rekey(client, payload)
                continue
            if self._handle_command(client, name, payload) == "restart":
                self._restarting = True
                return  # like a reboot: drop the session, come back through the backoff loop

    # -- telemetry and commands ----------------------------------------------------------------

    def _publish_telemetry(self, client: mqtt.Client) -> None:
        self._seq += 1
        reading = {
            "device": self.device_id,
            "seq": self._seq,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "heap_free": 31_000,
            "rssi": -58,
        }
        info = client.publish(f"{self.topics.telemetry}/state", json.dumps(reading), qos=1)
        self._in_flight = [i for i in self._in_flight if not i.is_published()] + [info]
        self.stats.telemetry_sent += 1

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        prefix = self.topics.commands + "/"
        if message.topic == self.certificate_topic:
            self._commands.put((_CERTIFICATE, bytes(message.payload)))
        elif message.topic == self.rekey_topic:
            self._commands.put((_REKEY, bytes(message.payload)))
        elif message.topic.startswith(prefix):
            self._commands.put((message.topic[len(prefix) :], bytes(message.payload)))

    def _handle_command(self, client: mqtt.Client, name: str, payload: bytes) -> str:
        request: dict[str, Any] = {}
        try:
            parsed = json.loads(payload) if payload else {}
            if isinstance(parsed, dict):
                request = parsed
        except ValueError:
            pass
        reply: dict[str, Any] = {"command": name, "ok": True}
        if "id" in request:
            reply["id"] = request["id"]
        if name == "ping":
            reply["reply"] = "pong"
        elif name == "telemetry":
            self._publish_telemetry(client)
        elif name == "restart":
            reply["reply"] = "restarting"
        else:
            reply.update(ok=False, error="unknown command")
        client.publish(self.topics.status, json.dumps(reply), qos=1)
        self.stats.commands_handled += 1
        self._log(f"command {name}: {'ok' if reply['ok'] else reply.get('error')}")
        return name

    # -- certificate renewal -------------------------------------------------------------------

    def _install_certificate(self, client: mqtt.Client, payload: bytes) -> bool:
        """Check and store a pushed certificate; True when the gateway must reconnect with it."""
        if not payload:
            return False  # the retained message was cleared
        try:
            certificate, key = checked_update(
                payload, self.bundle, pending_key_pem=self._pending_key
            )
        except CertificateRejectedError as exc:
            self.stats.certificates_rejected += 1
            self.stats.last_error = f"certificate rejected: {exc}"
            self._log(self.stats.last_error)
            reply = {"command": "certificate", "ok": False, "error": str(exc)}
            client.publish(self.topics.status, json.dumps(reply), qos=1)
            return False
        if certificate == self.bundle.certificate_pem:
            return False  # already in use (the retained copy, seen again after reconnecting)
        new_key = key != self.bundle.private_key_pem
        if self.flash_file is not None:
            try:  # power-cut safe: the certificate in full, then the key, then the certificate
                apply_flash_steps(
                    self.flash_file, switch_steps(certificate, new_key=new_key), self.layout
                )
            except GatewayError as exc:
                self.stats.last_error = f"cannot store the new certificate: {exc}"
                self._log(self.stats.last_error)
                return False
        # Leaving this session for the switch: nobody may take it for one with the new one.
        self._connected.clear()
        self.bundle = dataclasses.replace(self.bundle, certificate_pem=certificate,
                                          private_key_pem=key)  # fmt: skip
        self._tls = gateway_tls_context(self.bundle.ca_chain_pem, certificate, key)
        if new_key:
            self._pending_key = None
            self.stats.keys_replaced += 1
            # The CSR is answered: clear it so nobody reads it again.
            client.publish(self.csr_topic, b"", qos=1, retain=True).wait_for_publish(timeout=2)
        self.stats.certificates_installed += 1
        self._log(f"installed certificate {self.cert_serial}; reconnecting with it")
        self._switching = True
        return True

    # -- re-key over the air -------------------------------------------------------------------

    def _answer_rekey(self, client: mqtt.Client, payload: bytes) -> None:
        """Make a new key for a request (once per request id) and publish its CSR."""
        if not payload:
            return  # the request was cleared (done, or withdrawn)
        try:
            request = RekeyRequest.from_payload(payload)
        except ContractError as exc:
            self.stats.last_error = f"re-key request ignored: {exc}"
            self._log(self.stats.last_error)
            return
        if request.device != self.device_id:
            self.stats.last_error = f"re-key request ignored: it is for {request.device!r}"
            self._log(self.stats.last_error)
            return
        if request.request == self._answered and self._pending_key is None:
            return  # answered and done: the request is still retained, nothing more to do
        if request.request != self._answered or self._pending_key is None:
            key = new_key_pem(request.key_type)
            if self.flash_file is not None:
                try:
                    write_flash_files(
                        self.flash_file,
                        {PENDING_KEY_FILE: key, REKEY_FILE: rekey_state(request.request)},
                        self.layout,
                    )
                except GatewayError as exc:
                    self.stats.last_error = f"cannot store the new key: {exc}"
                    self._log(self.stats.last_error)
                    return
            self._pending_key, self._answered = key, request.request
        # The same request again (after a reconnect): the same key, the same CSR.
        client.publish(self.csr_topic, csr_message(request, self._pending_key), qos=1, retain=True)
        self.stats.csrs_sent += 1
        self._log(f"re-key {request.request[:8]}: new key made, CSR published")

    # -- direct publishing (tests, diagnostics) ------------------------------------------------

    def _ack_waiter(self, mid: int) -> tuple[threading.Event, list[int]]:
        # Made by whichever side comes first: the PUBACK may beat ``publish`` to it. Never call
        # paho while holding this lock (paho calls back holding its own locks).
        with self._acks_lock:
            waiter = self._acks.setdefault(mid, (threading.Event(), []))
            while len(self._acks) > _MAX_PENDING_ACKS:  # telemetry acks nobody waits for
                self._acks.popitem(last=False)
            return waiter

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        event, codes = self._ack_waiter(mid)
        codes.append(reason.value)
        event.set()

    def publish(self, topic: str, payload: bytes | str, timeout: float = 10.0) -> int:
        """Publish with QoS 1 as this gateway; the broker's PUBACK reason code (0x87: denied)."""
        client = self._client
        if client is None or not self.connected:
            raise RuntimeError(f"gateway {self.device_id} is not connected")
        info = client.publish(topic, payload, qos=1)
        event, codes = self._ack_waiter(info.mid)
        try:
            if not event.wait(timeout):
                raise TimeoutError(f"no PUBACK for {topic} within {timeout} s")
            return codes[0]
        finally:
            with self._acks_lock:
                self._acks.pop(info.mid, None)


def _described(step: FileStep) -> str:
    if isinstance(step, Rename):
        return f"finished it ({step.source} renamed over {step.target})"
    return f"undid it (removed {step.path}; the old certificate and key stay)"
