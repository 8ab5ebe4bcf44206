"""Re-key over the air, the control machine's MQTT side (the rollout's step, `pki deliver`).

For each device with a re-key in progress (``iotfleet pki rekey``, or a key older than
``pki_device_key_max_age_days``), iotfleet's delivery identity publishes the request on the
device's re-key topic (retained, QoS 1: a gateway offline now finds it when it returns) and
reads the device's CSR topic. A CSR that answers the request and passes the CA's rules
(``iotfleet.pki.csr``) is kept in the PKI state; the PKI engine then signs it (the reconcile
plan) and the certificate is delivered like a renewal (``iotfleet.fleet.cert_delivery``). A CSR that
breaks a rule is refused with a warning and nothing is signed. The request is cleared once the
certificate for the new key exists; the entry is dropped once the gateway uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from iotfleet.device.contract import (
    ContractError,
    CsrMessage,
    GatewayStatus,
    RekeyRequest,
    csr_topic,
    rekey_topic,
)
from iotfleet.fleet.cert_delivery import (
    DeviceDelivery,
    MqttLink,
    deliver_certificates,
    delivery_listener,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model.own_identities import DELIVERY_IDENTITY
from iotfleet.pki.csr import CsrRejectedError, checked_csr_key, spki_pem_of_certificate
from iotfleet.pki.delivery import read_ledger
from iotfleet.pki.index import load_index
from iotfleet.pki.rekey import (
    Rekey,
    finish_rekeys,
    key_since,
    read_rekeys,
    record_csr,
    request_rekey,
)
from iotfleet.pki.state import locked_layout


@dataclass
class DeviceRekey:
    """What happened for one device's re-key."""

    device: str
    request: str
    reason: str
    online: bool = False
    csr: str = "waiting"  # waiting (no answer yet), received, refused, signed
    refused: str | None = None  # why the CSR was refused (nothing signed)
    serial: str | None = None  # the certificate for the new key, once signed
    delivery: DeviceDelivery | None = None
    failures: list[str] = field(default_factory=list)  # "broker: why"

    @property
    def switched(self) -> bool:
        """The gateway was seen using the certificate of its new key."""
        return self.delivery is not None and self.delivery.switched


def due_rekeys(ctx: FleetContext, now: datetime | None = None) -> dict[str, str]:
    """``{device: reason}`` of the active devices that need a new key: asked for, or their key
    is older than ``pki_device_key_max_age_days`` (pure read: the rollout decides at load time
    whether its re-key step has work)."""
    state_dir = ctx.pki_settings.state_dir
    active = {d.id for d in ctx.fleet.active_devices}
    due = {name: r.reason for name, r in read_rekeys(state_dir).items() if name in active}
    limit = ctx.fleet.pki.device_key_max_age_days
    if limit is None or not state_dir.is_dir():
        return due
    moment = now or datetime.now(UTC)
    with locked_layout(state_dir, shared=True) as layout:
        index = load_index(layout)
        for device in sorted(active - set(due)):
            since = key_since(layout, index, device)
            if since is not None and moment - since >= timedelta(days=limit):
                due[device] = "key age"
    return due


def run_rekeys(
    ctx: FleetContext,
    devices: Sequence[str] | None = None,
    *,
    wait: float = 10.0,
    timeout: float = 10.0,
    targets: dict[str, tuple[str, int]] | None = None,
    now: datetime | None = None,
) -> list[DeviceRekey]:
    """Ask, collect CSRs, sign (reconcile, needs the CA passphrase) and deliver, for the
    devices due (``due_rekeys``; ``devices`` narrows them). ``wait``: seconds, per broker, for
    online gateways to answer and, after signing, to switch."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    state_dir = ctx.pki_settings.state_dir
    due = due_rekeys(ctx, moment)
    if devices is not None:
        due = {d: r for d, r in due.items() if d in devices}
    entries: dict[str, Rekey] = {d: request_rekey(state_dir, d, r, moment) for d, r in due.items()}
    results = {d: DeviceRekey(d, e.request, e.reason) for d, e in entries.items()}
    if not entries:
        return []
    key_types = {d.id: d.key_type for d in ctx.fleet.active_devices}
    answers: dict[str, bytes] = {}
    for broker, host, port, here in _brokers(ctx, list(entries), targets):
        requests = {
            d: RekeyRequest(device=d, request=entries[d].request, key_type=key_types[d])
            for d in here
        }
        _ask_on(ctx, broker, host, port, requests, results, answers, wait, timeout)
    fresh = False
    for device, payload in answers.items():
        fresh |= _take_csr(ctx, results[device], payload, key_types[device], moment)
    pending_csr = {d for d, e in read_rekeys(state_dir).items() if d in results and e.csr}
    if fresh or pending_csr:
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir, now=now)
        for warning in report.warnings:
            for device in results:
                if f": {device}: " in warning and results[device].refused is None:
                    results[device].refused = warning
    signed = _signed(ctx, results)
    if signed:
        for broker, host, port, here in _brokers(ctx, signed, targets):
            _clear_requests(ctx, broker, host, port, [d for d in here if d in signed], timeout)
        for delivery in deliver_certificates(ctx, signed, wait=wait, timeout=timeout,
                                             targets=targets, now=now):  # fmt: skip
            results[delivery.device].delivery = delivery
    ledger = read_ledger(state_dir)
    finished: dict[str, str] = {}
    for device, result in results.items():
        in_use = ledger[device].in_use if device in ledger else None
        if result.serial is not None and in_use is not None and f"{in_use:040x}" == result.serial:
            finished[device] = result.request
    finish_rekeys(state_dir, finished)
    return list(results.values())


def _brokers(
    ctx: FleetContext, devices: Sequence[str], targets: dict[str, tuple[str, int]] | None
) -> list[tuple[str, str, int, list[str]]]:
    out = []
    for broker in ctx.fleet.brokers:
        allowed = ctx.fleet.users_of(broker.name)
        here = [d for d in devices if d in allowed]
        if here:
            host, port = (targets or {}).get(broker.name) or delivery_listener(broker)
            out.append((broker.name, host, port, here))
    return out


def _identity(ctx: FleetContext) -> tuple[bytes, bytes]:
    store = ctx.pki
    return store.certificate_pem(DELIVERY_IDENTITY), store.private_key_pem(DELIVERY_IDENTITY)


def _ask_on(
    ctx: FleetContext,
    broker: str,
    host: str,
    port: int,
    requests: dict[str, RekeyRequest],
    results: dict[str, DeviceRekey],
    answers: dict[str, bytes],
    wait: float,
    timeout: float,
) -> None:
    """Publish the requests (retained) and read the CSRs that answer them, on one broker."""
    link = MqttLink(host, port, ctx.pki.ca_chain_pem(), _identity(ctx))
    problem = link.open(timeout)
    if problem is not None:
        for device in requests:
            results[device].failures.append(f"{broker}: {problem}")
        link.client.disconnect()
        return
    csr_topics = {csr_topic(d): d for d in requests}
    status_topics = {f"{ctx.fleet.topic_prefix(ctx.fleet.device(d))}/status": d for d in requests}
    try:
        for topic in [*csr_topics, *status_topics]:
            link.client.subscribe(topic, qos=1)
        mids = {
            d: link.client.publish(rekey_topic(d), r.to_payload(), qos=1, retain=True).mid
            for d, r in requests.items()
        }
        link.pump_until(lambda: all(m in link.acks for m in mids.values()), timeout)
        for device, mid in mids.items():
            code = link.acks.get(mid)
            if code is None or code >= 0x80:
                why = "no PUBACK" if code is None else f"PUBACK 0x{code:02x}"
                results[device].failures.append(f"{broker}: re-key request: {why}")

        csr_topics_of = {d: t for t, d in csr_topics.items()}

        def answered(device: str) -> bool:
            payload = link.statuses.get(csr_topics_of[device])
            return payload is not None and _answers(payload, requests[device])

        def online(device: str) -> bool:
            for topic, d in status_topics.items():
                if d == device and topic in link.statuses:
                    try:
                        state = GatewayStatus.model_validate_json(link.statuses[topic]).state
                    except ValidationError:
                        continue
                    return state == "online"
            return False

        link.pump_until(lambda: False, min(0.5, wait))  # retained messages first
        link.pump_until(lambda: all(answered(d) or not online(d) for d in requests), wait)
        for device in requests:
            results[device].online |= online(device)
            payload = link.statuses.get(csr_topics_of[device])
            if payload and device not in answers:
                answers[device] = payload
    finally:
        link.client.disconnect()


def _answers(payload: bytes, request: RekeyRequest) -> bool:
    try:
        return CsrMessage.from_payload(payload).request == request.request
    except ContractError:
        return bool(payload)  # malformed, but an answer: judged (and refused) by _take_csr


def _take_csr(
    ctx: FleetContext, result: DeviceRekey, payload: bytes, key_type: str, now: datetime
) -> bool:
    """Check a CSR message against the CA's rules; keep it if it passes. True if kept anew."""
    try:
        message = CsrMessage.from_payload(payload)
    except ContractError as exc:
        result.csr, result.refused = "refused", f"{result.device}: {exc}"
        return False
    if message.request != result.request:
        return False  # an answer to an older request: ignored, the gateway gets the new one
    if message.device != result.device:
        result.csr = "refused"
        result.refused = f"{result.device}: the CSR message names {message.device!r}"
        return False
    try:
        checked_csr_key(message.csr.encode(), result.device, key_type)
    except CsrRejectedError as exc:
        result.csr, result.refused = "refused", str(exc)
        return False
    result.csr = "received"
    before = read_rekeys(ctx.pki_settings.state_dir).get(result.device)
    kept = record_csr(ctx.pki_settings.state_dir, result.device, result.request,
                      message.csr.encode(), now)  # fmt: skip
    return kept and (before is None or before.csr != message.csr.encode())


def _signed(ctx: FleetContext, results: dict[str, DeviceRekey]) -> list[str]:
    """Devices whose current certificate carries the key of their CSR (signed now or before)."""
    store = ctx.pki
    signed: list[str] = []
    for device, entry in read_rekeys(ctx.pki_settings.state_dir).items():
        result = results.get(device)
        if result is None or entry.csr is None or result.refused is not None:
            continue
        try:
            key = checked_csr_key(entry.csr, device, ctx.fleet.device(device).key_type)
        except CsrRejectedError:
            continue
        record = store.record(device)
        if record is None or record.status != "valid":
            continue
        if spki_pem_of_certificate(store.certificate_pem(device)) == key:
            result.csr, result.serial = "signed", record.serial_hex
            signed.append(device)
    return signed


def _clear_requests(
    ctx: FleetContext, broker: str, host: str, port: int, devices: list[str], timeout: float
) -> None:
    """Remove the retained requests: answered, the gateway must not make another key."""
    if not devices:
        return
    link = MqttLink(host, port, ctx.pki.ca_chain_pem(), _identity(ctx))
    try:
        if link.open(timeout) is not None:
            return  # the gateway ignores a request it answered; the next run clears it
        mids = [link.client.publish(rekey_topic(d), b"", qos=1, retain=True).mid for d in devices]
        link.pump_until(lambda: all(m in link.acks for m in mids), timeout)
    finally:
        link.client.disconnect()
