"""The file contract between iotfleet and a gateway: what lies in its LittleFS, in which format.

The firmware (``files/firmware/iotfleet-gateway/``) and the gateway simulator
(``iotfleet.gateway``) read exactly these files; ``docs/gateways.md`` documents them.

    /iotfleet.json   configuration, JSON (no secrets: safe to print on the serial console)
    /ca.pem          CA chain to verify brokers (issuing intermediate + root), PEM
    /client.pem      the device's certificate, PEM
    /client.key      the device's private key, unencrypted PKCS#8 PEM
    /wifi.pass       Wi-Fi passphrase, 8..63 ASCII characters, no newline
    /mqtt.pass       MQTT password, no newline (only when the device has one)

And over MQTT (``docs/gateways.md``, "Certificate renewal"): the renewed certificate arrives on
``certificate_topic(device_id)`` as a ``CertificateUpdate``; the gateway reports the serial it
uses in its ``GatewayStatus`` on its status topic. A re-key request arrives on
``rekey_topic(device_id)`` (``RekeyRequest``); the gateway keeps its new key in
``/client.key.new`` until the certificate for it arrives and answers on ``csr_topic(device_id)``
(``CsrMessage``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from iotfleet.model.names import check_identity_name, check_topic_name
from iotfleet.model.settings import MAX_NTP_SERVERS

CONTRACT_VERSION = 1
CONFIG_FILE = "/iotfleet.json"
CA_FILE = "/ca.pem"
CERT_FILE = "/client.pem"
KEY_FILE = "/client.key"
WIFI_PASS_FILE = "/wifi.pass"  # noqa: S105 - a file name
MQTT_PASS_FILE = "/mqtt.pass"  # noqa: S105 - a file name
PENDING_KEY_FILE = "/client.key.new"  # a re-key's new key, until its certificate arrives
PENDING_CERT_FILE = "/client.pem.new"  # a new certificate, written in full before any rename
REKEY_FILE = "/rekey.json"  # the re-key request answered last ({"request": ID}), no secret
REQUIRED_FILES = (CONFIG_FILE, CA_FILE, CERT_FILE, KEY_FILE, WIFI_PASS_FILE)
MAX_FILE_SIZE = 16 * 1024  # the firmware reads each file into RAM (about 40 KB free heap)
MAX_CONFIG_SIZE = 2048  # ArduinoJson's document in the sketch is sized for this

CERTIFICATE_TOPIC_ROOT = "iotfleet/pki"  # reserved: outside every device's prefix
MAX_UPDATE_SIZE = 8 * 1024  # a leaf + intermediate + root in PEM is about 2.5 KB (EC)

WIFI_PASSPHRASE_MIN = 8  # WPA2-PSK passphrase: 8..63 printable ASCII characters
WIFI_PASSPHRASE_MAX = 63


class ContractError(ValueError):
    """Files that break the contract (what a board would refuse or misread)."""


def check_wifi_passphrase(value: str) -> str:
    """Return ``value`` if it is a WPA2 passphrase; the message never repeats the value."""
    if not WIFI_PASSPHRASE_MIN <= len(value) <= WIFI_PASSPHRASE_MAX:
        raise ValueError(
            f"a Wi-Fi passphrase has {WIFI_PASSPHRASE_MIN}..{WIFI_PASSPHRASE_MAX} characters, "
            f"this one has {len(value)}"
        )
    if not all(32 <= ord(char) <= 126 for char in value):
        raise ValueError("a Wi-Fi passphrase is printable ASCII only")
    return value


class Topics(BaseModel):
    """Where the gateway publishes and listens (the broker's ACL allows exactly these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    telemetry: str = Field(description="publish readings under <telemetry>/<name>")
    status: str = Field(description="presence (retained) and command acknowledgements")
    commands: str = Field(description="subscribe to <commands>/#")

    @field_validator("telemetry", "status", "commands")
    @classmethod
    def _topic(cls, value: str) -> str:
        return check_topic_name(value)

    @classmethod
    def under(cls, prefix: str) -> Topics:
        return cls(
            telemetry=f"{prefix}/telemetry",
            status=f"{prefix}/status",
            commands=f"{prefix}/commands",
        )


class GatewayConfig(BaseModel):
    """``/iotfleet.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1  # CONTRACT_VERSION
    device_id: str = Field(description="MQTT client id; the certificate's CN")
    wifi_ssid: str = Field(description="network to join")
    mqtt_hosts: Annotated[list[str], Field(min_length=1, max_length=8)] = Field(
        description="brokers to try in order; names must match their certificates"
    )
    mqtt_port: int = Field(8883, ge=1, le=65535)
    mqtt_username: str | None = Field(None, description="set when /mqtt.pass is present")
    topics: Topics
    keepalive: int = Field(60, ge=5, le=3600, description="MQTT keepalive, seconds")
    telemetry_interval: int = Field(30, ge=1, le=86400, description="seconds between readings")
    ntp_servers: Annotated[list[str], Field(min_length=1, max_length=MAX_NTP_SERVERS)] = Field(
        description="time sources (espgw_ntp_servers): certificates cannot be checked without "
        "the date"
    )
    backoff_initial: float = Field(1.0, gt=0, le=60, description="first reconnect delay, s")
    backoff_max: float = Field(300.0, gt=0, le=3600, description="longest reconnect delay, s")

    @field_validator("device_id")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_identity_name(value)

    @field_validator("wifi_ssid")
    @classmethod
    def _ssid(cls, value: str) -> str:
        if not 1 <= len(value.encode()) <= 32:
            raise ValueError("a Wi-Fi SSID is 1..32 bytes")
        return value


@dataclass(frozen=True)
class Bundle:
    """Everything one device needs, secrets included (never printed: see ``__repr__``)."""

    config: GatewayConfig
    ca_chain_pem: bytes
    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)
    wifi_passphrase: SecretStr = field(repr=False)
    mqtt_password: SecretStr | None = field(default=None, repr=False)

    def files(self) -> dict[str, bytes]:
        """The contract's files, path -> content, sorted (the image is built in this order)."""
        files = {
            CONFIG_FILE: self.config.model_dump_json(exclude_none=True).encode(),
            CA_FILE: self.ca_chain_pem,
            CERT_FILE: self.certificate_pem,
            KEY_FILE: self.private_key_pem,
            WIFI_PASS_FILE: self.wifi_passphrase.get_secret_value().encode(),
        }
        if self.mqtt_password is not None:
            files[MQTT_PASS_FILE] = self.mqtt_password.get_secret_value().encode()
        check_files(files)
        return dict(sorted(files.items()))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> Bundle:
        """Read the contract back (what the firmware does at boot); ``ContractError`` if broken."""
        check_files(files)
        try:
            config = GatewayConfig.model_validate_json(files[CONFIG_FILE])
        except ValidationError as exc:
            raise ContractError(f"{CONFIG_FILE}: {_first_error(exc)}") from None
        try:
            passphrase = check_wifi_passphrase(files[WIFI_PASS_FILE].decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ContractError(f"{WIFI_PASS_FILE}: {exc}") from None
        password = files.get(MQTT_PASS_FILE)
        if (password is None) != (config.mqtt_username is None):
            raise ContractError(f"{MQTT_PASS_FILE} and mqtt_username go together")
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            if not files[name].startswith(b"-----BEGIN "):
                raise ContractError(f"{name} is not PEM")
        return cls(
            config=config,
            ca_chain_pem=files[CA_FILE],
            certificate_pem=files[CERT_FILE],
            private_key_pem=files[KEY_FILE],
            wifi_passphrase=SecretStr(passphrase),
            mqtt_password=None if password is None else SecretStr(password.decode()),
        )


def check_files(files: Mapping[str, bytes]) -> None:
    """Names and sizes the firmware accepts."""
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ContractError(f"missing {', '.join(missing)}")
    for name, content in files.items():
        limit = MAX_CONFIG_SIZE if name == CONFIG_FILE else MAX_FILE_SIZE
        if len(content) > limit:
            raise ContractError(
                f"{name} is {len(content)} bytes, the firmware reads at most {limit}"
            )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def certificate_topic(device_id: str) -> str:
    """Where iotfleet delivers ``device_id``'s renewed certificate (retained, QoS 1).

    Only that device may read it and only iotfleet's delivery identity may write it (ACL), so a
    retained message there is the one iotfleet last published. The one place this topic is
    spelled: the ACL, the publisher, the simulator and the docs all come here.
    """
    return f"{CERTIFICATE_TOPIC_ROOT}/{device_id}/certificate"


def rekey_topic(device_id: str) -> str:
    """Where iotfleet asks ``device_id`` for a new key (retained, QoS 1; written only by the
    delivery identity, read only by the device). An empty retained message clears the request."""
    return f"{CERTIFICATE_TOPIC_ROOT}/{device_id}/rekey"


def csr_topic(device_id: str) -> str:
    """Where ``device_id`` publishes the CSR of its new key (retained, QoS 1; written only by the
    device itself, read only by the delivery identity)."""
    return f"{CERTIFICATE_TOPIC_ROOT}/{device_id}/csr"


MAX_CSR_MESSAGE_SIZE = 4 * 1024  # an EC P-256 CSR in PEM is about 500 bytes, RSA-2048 1 KB


class RekeyRequest(BaseModel):
    """Payload on ``rekey_topic``: make a new key and send its CSR, answering ``request``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    device: str = Field(description="the device id")
    request: str = Field(pattern=r"^[0-9a-f]{16,64}$", description="request id, hex")
    key_type: Literal["ec-p256", "rsa-2048"] = Field("ec-p256", description="key to generate")

    def to_payload(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> RekeyRequest:
        if len(payload) > MAX_CSR_MESSAGE_SIZE:
            raise ContractError(f"re-key request of {len(payload)} bytes")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            raise ContractError(f"re-key request: {_first_error(exc)}") from None


class CsrMessage(BaseModel):
    """Payload on ``csr_topic``: the CSR (PKCS#10, PEM) of the key made for ``request``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    device: str = Field(description="the device id (must be the CSR's CN)")
    request: str = Field(pattern=r"^[0-9a-f]{16,64}$", description="the request answered")
    csr: str = Field(description="PKCS#10 certificate signing request, PEM")

    def to_payload(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> CsrMessage:
        if len(payload) > MAX_CSR_MESSAGE_SIZE:
            raise ContractError(f"CSR message of {len(payload)} bytes (max {MAX_CSR_MESSAGE_SIZE})")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            raise ContractError(f"CSR message: {_first_error(exc)}") from None


class CertificateUpdate(BaseModel):
    """Payload on ``certificate_topic``: JSON, UTF-8. The gateway trusts none of it until the
    certificate chains to the CA in its flash and carries its own public key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    device: str = Field(description="the device id (the certificate's CN)")
    serial: str = Field(pattern=r"^[0-9a-f]{40}$", description="40 lowercase hex digits")
    certificate: str = Field(description="the new client certificate, PEM")
    chain: str = Field(description="issuing intermediate + root, PEM (like /ca.pem)")

    def to_payload(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> CertificateUpdate:
        """Parse a message; ``ContractError`` saying what is wrong (never echoing the payload)."""
        if len(payload) > MAX_UPDATE_SIZE:
            raise ContractError(
                f"certificate update of {len(payload)} bytes (max {MAX_UPDATE_SIZE})"
            )
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            raise ContractError(f"certificate update: {_first_error(exc)}") from None


class GatewayStatus(BaseModel):
    """Retained presence on the status topic (command replies there carry ``command`` instead).

    Online, on connect: ``since`` is when it came online. Its will (``offline``) is fixed when it
    connects, so it carries the certificate, the firmware and ``last_online`` (that same time)
    but no ``since``: nobody knows when the board will go. A clean goodbye has both.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    state: Literal["online", "offline"]
    cert_serial: str | None = Field(None, description="serial of the certificate in use, hex")
    firmware: str | None = Field(None, description="firmware name and version")
    since: datetime | None = Field(None, description="since when this state holds (UTC)")
    last_online: datetime | None = Field(
        None, description="offline: when the session that ended came online (UTC)"
    )

    @property
    def last_seen(self) -> datetime | None:
        """The latest moment the gateway is known to have been up."""
        if self.state == "online":
            return self.since
        return self.since or self.last_online
