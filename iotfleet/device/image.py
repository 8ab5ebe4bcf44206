"""Per-device filesystem images: the fleet's view of one device, packed for its board.

``device_bundle`` gathers what a device needs (its certificate and key from the PKI, the CA
chain, Wi-Fi and broker settings of the station it is flashed from, its MQTT password if any);
``build_device_image`` packs that into the LittleFS partition of the board's flash layout.
Every problem is a ``DeviceImageError`` naming the device or station and the inventory key,
never a secret's value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import SecretStr

from iotfleet.device.contract import (
    Bundle,
    ContractError,
    GatewayConfig,
    Topics,
    check_wifi_passphrase,
)
from iotfleet.device.layouts import FlashLayout, UnknownLayoutError, flash_layout
from iotfleet.device.littlefs_image import FilesystemError, build_littlefs_image
from iotfleet.model import Board, Broker, Device, FlashStation, Fleet, SecretRef
from iotfleet.model.addresses import broker_dns_names, broker_ip_addresses
from iotfleet.model.secretref import SecretError
from iotfleet.pki import PkiError, PkiStore
from iotfleet.pki.store import KeyOnBoardError


class SecretResolver(Protocol):
    def resolve(self, ref: SecretRef, slot: str, *, where: str, key: str) -> SecretStr: ...


class DeviceSources(Protocol):
    """What a device's image is built from (a run's ``FleetContext`` is one): the fleet, its
    PKI, its secrets and resolved MQTT passwords."""

    @property
    def fleet(self) -> Fleet: ...
    @property
    def pki(self) -> PkiStore: ...
    @property
    def secrets(self) -> SecretResolver: ...
    @property
    def passwords(self) -> Mapping[str, SecretStr]: ...


class DeviceImageError(ValueError):
    """A device's image cannot be built; names where (device/station) and the key."""

    def __init__(self, where: str, key: str, message: str) -> None:
        self.where = where
        self.key = key
        super().__init__(f"{where}: {key}: {message}")


@dataclass(frozen=True)
class DeviceImage:
    """The filesystem partition of one device, ready to flash at ``layout.fs_offset``."""

    device_id: str
    layout: FlashLayout
    data: bytes = field(repr=False)
    sha256: str
    cert_serial: str  # hex serial of the certificate inside (for the registry)
    files: tuple[str, ...]  # names only: the contents are secret


def wifi_passphrase_slot(ssid: str) -> str:
    """Where a ``generated`` Wi-Fi passphrase is kept: one per network, shared by stations."""
    return f"wifi-passphrase/{ssid.encode().hex()}"


def generate_wifi_passphrases(ctx: DeviceSources) -> None:
    """Generate every ``generated`` Wi-Fi passphrase the fleet's stations flash with, so that a
    planning run holds them in its stage (a passphrase first made while an image is built
    would come after the run decided it had nothing to commit, and be made anew every run)."""
    for station in ctx.fleet.stations:
        settings = station.gateway
        ref = settings.wifi_passphrase
        ssid = settings.wifi_ssid
        if station.boards and ssid is not None and ref is not None and ref.kind == "generated":
            _resolve_wifi_passphrase(ctx, station, ref, ssid)


def _resolve_wifi_passphrase(
    ctx: DeviceSources, station: FlashStation, ref: SecretRef, ssid: str
) -> SecretStr:
    return ctx.secrets.resolve(
        ref, wifi_passphrase_slot(ssid), where=f"host {station.name}", key="espgw_wifi_passphrase"
    )


def find_board(ctx: DeviceSources, device_id: str) -> tuple[FlashStation, Board]:
    """The flash station and board entry that flash ``device_id``."""
    for station in ctx.fleet.stations:
        for board in station.boards:
            if board.device == device_id:
                return station, board
    raise DeviceImageError(
        f"device {device_id}", "espgw_boards", "no flash station lists a board for this device"
    )


def board_layout(station: FlashStation, board: Board, override: str | None = None) -> FlashLayout:
    """The board's layout: ``override``, else the board's ``layout``, else ``espgw_layout``."""
    name = override or board.layout or station.gateway.layout
    try:
        return flash_layout(name)
    except UnknownLayoutError as exc:
        index = station.boards.index(board) if board in station.boards else 0
        key = f"espgw_boards[{index}].layout" if board.layout else "espgw_layout"
        raise DeviceImageError(f"host {station.name}", key, str(exc)) from None


def device_bundle(
    ctx: DeviceSources,
    device_id: str,
    *,
    station: FlashStation | None = None,
    pki: PkiStore | None = None,
) -> Bundle:
    """Everything ``device_id`` needs, as the station that flashes it sees it."""
    where = f"device {device_id}"
    try:
        device = ctx.fleet.device(device_id)
    except KeyError:
        raise DeviceImageError(where, "device", "not in fleet_devices") from None
    if device.revoked is not None:
        raise DeviceImageError(
            where, "revoked", f"the device is revoked ({device.revoked}): it is not flashed"
        )
    if station is None:
        station, _ = find_board(ctx, device_id)
    settings = station.gateway
    host = f"host {station.name}"
    if settings.wifi_ssid is None:
        raise DeviceImageError(host, "espgw_wifi_ssid", "required to flash gateways")
    if settings.wifi_passphrase is None:
        raise DeviceImageError(host, "espgw_wifi_passphrase", "required to flash gateways")
    try:
        passphrase = _resolve_wifi_passphrase(
            ctx, station, settings.wifi_passphrase, settings.wifi_ssid
        )
        check_wifi_passphrase(passphrase.get_secret_value())
    except SecretError as exc:
        raise DeviceImageError(host, "espgw_wifi_passphrase", _tail(exc)) from None
    except ValueError as exc:
        raise DeviceImageError(host, "espgw_wifi_passphrase", str(exc)) from None

    brokers = _brokers(ctx, station, device)
    password = ctx.passwords.get(device.id)
    _check_listeners(device, brokers, settings.broker_port, password is not None, host)
    store = pki or ctx.pki
    try:
        certificate = store.certificate_pem(device.id)
        key = store.private_key_pem(device.id)
        chain = store.ca_chain_pem()
    except KeyOnBoardError as exc:  # re-keyed over the air: flashing would need its key
        raise DeviceImageError(where, "certificate", str(exc)) from None
    except PkiError as exc:
        raise DeviceImageError(
            where, "certificate", f"{exc} (the PKI tier, deploy/pki.py, issues it)"
        ) from None
    config = GatewayConfig(
        device_id=device.id,
        wifi_ssid=settings.wifi_ssid,
        mqtt_hosts=[_client_facing_name(b) for b in brokers],
        mqtt_port=settings.broker_port,
        mqtt_username=device.id if password is not None else None,
        topics=Topics.under(ctx.fleet.topic_prefix(device)),
        ntp_servers=settings.ntp_servers,
    )
    return Bundle(
        config=config,
        ca_chain_pem=chain,
        certificate_pem=certificate,
        private_key_pem=key,
        wifi_passphrase=passphrase,
        mqtt_password=password,
    )


def build_device_image(
    ctx: DeviceSources,
    device_id: str,
    *,
    station: FlashStation | None = None,
    layout: str | None = None,
    pki: PkiStore | None = None,
) -> DeviceImage:
    """The LittleFS partition image for ``device_id`` on its board (deterministic bytes).

    Args:
        ctx: the fleet and its state (PKI, secrets).
        device_id: a device of ``fleet_devices``.
        station: the flash station flashing it (default: the one listing its board).
        layout: flash layout name overriding the board's and the station's.
        pki: a PKI store to reuse across many devices (default: ``ctx.pki``).
    """
    if station is None:
        station, board = find_board(ctx, device_id)
    else:
        board = next((b for b in station.boards if b.device == device_id), None) or Board(
            port="-", device=device_id
        )
    chosen = board_layout(station, board, layout)
    bundle = device_bundle(ctx, device_id, station=station, pki=pki)
    store = pki or ctx.pki
    try:
        files = bundle.files()
        data = build_littlefs_image(files, chosen)
    except (ContractError, FilesystemError) as exc:
        raise DeviceImageError(f"device {device_id}", "secrets", str(exc)) from None
    record = store.record(device_id)
    return DeviceImage(
        device_id=device_id,
        layout=chosen,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        cert_serial=record.serial_hex if record is not None else "",
        files=tuple(files),
    )


def gateway_broker_names(fleet: Fleet, station: FlashStation, device: Device) -> list[str] | None:
    """Broker hosts a gateway's image lists, in the order it tries them; none: every broker.

    The device's own ``brokers``, else the station's ``espgw_brokers``, else every broker. In
    a multi-site fleet the default is the device's site (its edges, then its cores) and the
    station's list keeps only the brokers that hold the device.
    """
    if device.brokers is not None:
        return list(device.brokers)
    if not fleet.sites:
        return station.gateway.brokers
    site_brokers = fleet.site_brokers(device.site)
    if station.gateway.brokers is None:
        return site_brokers
    return [name for name in station.gateway.brokers if name in site_brokers]


def _brokers(ctx: DeviceSources, station: FlashStation, device: Device) -> list[Broker]:
    """The brokers of ``gateway_broker_names``, refused when there are none."""
    names = gateway_broker_names(ctx.fleet, station, device)
    if names == [] and ctx.fleet.sites:
        raise DeviceImageError(
            f"host {station.name}",
            "espgw_brokers",
            f"none of them holds device {device.id} (site {device.site})",
        )
    brokers = ctx.fleet.brokers if names is None else [ctx.fleet.broker(n) for n in names]
    if not brokers:
        raise DeviceImageError(
            f"host {station.name}", "espgw_brokers", "the fleet has no broker to connect to"
        )
    return brokers


def _check_listeners(
    device: Device, brokers: list[Broker], port: int, has_password: bool, host: str
) -> None:
    """The device must be able to log in where it is sent: TLS listener, credentials it has."""
    for broker in brokers:
        listener = next((lst for lst in broker.mosquitto.listeners if lst.port == port), None)
        if listener is None or not listener.tls:
            raise DeviceImageError(
                host, "espgw_broker_port", f"broker {broker.name} has no TLS listener on {port}"
            )
        if listener.requires_password and not has_password:
            raise DeviceImageError(
                f"device {device.id}",
                "password",
                f"listener {port} of broker {broker.name} needs a password and the device has none",
            )


def _client_facing_name(broker: Broker) -> str:
    """What the gateway dials: a name (or address) its certificate carries."""
    names = broker_dns_names(broker) or broker_ip_addresses(broker)
    return names[0] if names else broker.ssh_hostname


def _tail(exc: Exception) -> str:
    """A SecretError's message without the "where: key:" prefix we add ourselves."""
    return str(exc).split(": ", 2)[-1]
