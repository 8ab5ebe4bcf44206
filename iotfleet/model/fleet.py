"""The validated fleet: brokers, devices, clients, roles, flash stations and PKI settings."""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from iotfleet.model.names import (
    check_identity_name,
    check_mac,
    check_topic_filter,
    check_topic_name,
)
from iotfleet.model.secretref import SecretRef
from iotfleet.model.settings import (
    Auth,
    Board,
    FirewallSettings,
    GatewaySettings,
    MosquittoSettings,
    SshHardeningSettings,
)
from iotfleet.model.strict import reject_loose_boolean

KeyType = Literal["ec-p256", "rsa-2048"]
RevocationReason = Literal[
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_loose_boolean(cls, info.field_name, value)


class Role(_Model):
    """Topic permissions granted to the clients (or devices) that hold the role.

    ``%u`` (username) and ``%c`` (client id) are substituted by Mosquitto.
    """

    read: list[str] = Field(default_factory=list, description="filters the role may subscribe to")
    write: list[str] = Field(default_factory=list, description="topics the role may publish to")
    readwrite: list[str] = Field(default_factory=list, description="both")

    @field_validator("read", "write", "readwrite")
    @classmethod
    def _filters(cls, topics: list[str]) -> list[str]:
        return [check_topic_filter(t) for t in topics]

    def all_filters(self) -> list[str]:
        return [*self.read, *self.write, *self.readwrite]


# Roles every fleet has; the inventory may add roles or override these by name.
BUILTIN_ROLES: dict[str, Role] = {
    "admin": Role(readwrite=["#"], read=["$SYS/#"]),
    "dashboard": Role(read=["{root}/+/telemetry/#", "{root}/+/status"]),
    "operator": Role(
        read=["{root}/+/telemetry/#", "{root}/+/status"], write=["{root}/+/commands/#"]
    ),
}


class Device(_Model):
    """A gateway or other device with its own identity (``fleet_devices``)."""

    id: str = Field(description="MQTT client id, certificate CN and username")
    group: str | None = Field(None, description="free-form group, e.g. a site")
    mac: str | None = Field(None, description="expected MAC of the board (binds the identity)")
    key_type: KeyType = Field("ec-p256", description="ec-p256 (default) or rsa-2048")
    password: SecretRef | None = Field(None, description="MQTT password for password listeners")
    roles: list[str] = Field(default_factory=list, description="extra roles (never beyond own)")
    topic_prefix: str | None = Field(None, description="default: <fleet_topic_root>/<id>")
    revoked: RevocationReason | None = Field(None, description="revoke with this reason")
    brokers: list[str] | None = Field(
        None, description="broker hosts this device may use and connects to; default: all"
    )
    site: str | None = Field(
        None,
        description="site (fleet_sites) whose edge brokers, and its cores, hold this device; "
        "required when the fleet has sites",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_identity_name(value)

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        return None if value is None else check_mac(value)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else check_topic_name(value.rstrip("/"))

    @field_validator("password", mode="before")
    @classmethod
    def _secret(cls, value: object) -> SecretRef | None:
        return None if value is None else SecretRef.parse(value)


class Client(_Model):
    """A person or service that talks to the brokers (``fleet_clients``)."""

    name: str = Field(description="MQTT username and certificate CN")
    roles: list[str] = Field(default_factory=list, description="roles from fleet_roles")
    auth: Auth = Field("certificate", description="credentials to issue")
    password: SecretRef | None = Field(None, description="env:NAME, file:PATH or generated")
    key_type: KeyType = Field("ec-p256", description="ec-p256 (default) or rsa-2048")
    revoked: RevocationReason | None = Field(None, description="revoke with this reason")
    brokers: list[str] | None = Field(
        None, description="broker hosts this client may use; default: all"
    )
    site: str | None = Field(
        None,
        description="with fleet_sites: the site whose edge brokers hold this client too; "
        "none: the core brokers only",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identity_name(value)

    @field_validator("password", mode="before")
    @classmethod
    def _secret(cls, value: object) -> SecretRef | None:
        return None if value is None else SecretRef.parse(value)

    @model_validator(mode="after")
    def _password_when_needed(self) -> Client:
        if self.auth != "certificate" and self.password is None:
            raise ValueError(f"auth {self.auth} needs a password (env:NAME, file:PATH, generated)")
        return self

    @property
    def has_certificate(self) -> bool:
        return self.auth in ("certificate", "certificate+password")


class Site(_Model):
    """A site (``fleet_sites``): its edge brokers, bridged to core brokers over mTLS."""

    name: str = Field(description="name of the site (devices and clients name it in site)")
    edges: list[str] = Field(description="edge broker hosts of the site (at least one)")
    cores: list[str] | None = Field(
        None,
        description="core brokers its edges bridge to, in failover order; "
        "default: fleet_core_brokers",
    )
    bridge_revoked: RevocationReason | None = Field(
        None,
        description="revoke the bridge identities of the site's edges with this reason "
        "(the site is cut off at the core)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identity_name(value)


class PkiConfig(_Model):
    """``pki_*`` keys: where the fleet's private CA lives and how long things are valid."""

    state_dir: Path | None = Field(None, description="PKI state directory (outside git)")
    passphrase_env: str = Field(
        "IOTFLEET_PKI_PASSPHRASE", description="environment variable holding the CA passphrase"
    )
    passphrase_file: Path | None = Field(None, description="or a 0600 file holding it (~ ok)")
    passphrase_generated: bool = Field(
        False,
        description="or generate it once and keep it 0600 with the fleet's state (labs, "
        "classrooms; back the state dir up with it)",
    )

    @field_validator("passphrase_file")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    ca_name: str = Field("iotfleet", description="name used in the CA subjects")
    renew_before_days: int = Field(30, ge=1, le=365, description="renew inside this window")
    broker_days: int = Field(397, ge=2, le=3650, description="validity of broker certificates")
    device_days: int = Field(825, ge=2, le=7300, description="validity of device certificates")
    client_days: int = Field(397, ge=2, le=3650, description="validity of client certificates")
    crl_days: int = Field(7, ge=1, le=365, description="validity of each CRL (nextUpdate)")
    crl_refresh_before_days: int = Field(
        5,
        ge=0,
        le=364,
        description="re-sign the CRL when nextUpdate is closer than this (the daily CRL timer "
        "re-signs every crl_days - this days; two missed runs still leave 3 days)",
    )
    device_renew_same_key: bool = Field(
        True,
        description="renew device certificates on the same key and deliver them over MQTT "
        "(false: a new key, the old certificate revoked at once; boards must be re-flashed)",
    )
    device_key_max_age_days: int | None = Field(
        None,
        ge=1,
        le=7300,
        description="re-key a device over the air once its key is this old (the gateway makes "
        "the new key and sends a CSR; `iotfleet pki rekey DEVICE` asks for one at any time); "
        "unset: keys are replaced only on request",
    )


class Broker(_Model):
    """A broker host from the ``brokers`` group."""

    name: str
    ssh_hostname: str
    ssh_port: int = 22
    mosquitto: MosquittoSettings
    firewall: FirewallSettings
    ssh_hardening: SshHardeningSettings = Field(default_factory=SshHardeningSettings)

    @property
    def firewall_ssh_port(self) -> int:
        return self.firewall.ssh_port or self.ssh_port

    def network_ports(self) -> set[int]:
        """TCP ports the firewall opens besides SSH: non-loopback listeners and extra ports."""
        ports = {
            listener.port
            for listener in self.mosquitto.listeners
            if listener.bind_address is None
            or not ipaddress.ip_address(listener.bind_address).is_loopback
        }
        ports.update(self.firewall.extra_tcp_ports)
        ports.discard(self.firewall_ssh_port)
        return ports

    def password_ports(self) -> set[int]:
        """Reachable listeners that check passwords: the ones a guesser can try."""
        return {
            listener.port
            for listener in self.mosquitto.listeners
            if listener.requires_password and listener.port in self.network_ports()
        }


class FlashStation(_Model):
    """A host of the ``flash_stations`` group (``@local`` by default) with boards attached."""

    name: str
    gateway: GatewaySettings

    @property
    def boards(self) -> list[Board]:
        return self.gateway.boards


class Fleet(_Model):
    """Everything the inventory says, validated once."""

    name: str
    topic_root: str = "devices"
    brokers: list[Broker]
    devices: list[Device]
    clients: list[Client]
    roles: dict[str, Role]
    stations: list[FlashStation]
    pki: PkiConfig
    # Multi-site topology; none: one implicit site, every device on every broker.
    sites: list[Site] = Field(default_factory=list)
    core_brokers: list[str] = Field(default_factory=list)

    def device(self, device_id: str) -> Device:
        for device in self.devices:
            if device.id == device_id:
                return device
        raise KeyError(device_id)

    def broker(self, name: str) -> Broker:
        for broker in self.brokers:
            if broker.name == name:
                return broker
        raise KeyError(name)

    def topic_prefix(self, device: Device) -> str:
        return device.topic_prefix or f"{self.topic_root}/{device.id}"

    @property
    def active_devices(self) -> list[Device]:
        return [d for d in self.devices if d.revoked is None]

    @property
    def active_clients(self) -> list[Client]:
        return [c for c in self.clients if c.revoked is None]

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def cores_of(self, site: Site) -> list[str]:
        """The core brokers ``site``'s edges bridge to, in failover order."""
        return list(site.cores) if site.cores is not None else list(self.core_brokers)

    def site_of_edge(self, broker_name: str) -> Site | None:
        """The site whose edge ``broker_name`` is (none for a core or a fleet without sites)."""
        return next((s for s in self.sites if broker_name in s.edges), None)

    def site_brokers(self, site_name: str | None) -> list[str]:
        """Brokers that hold a device or client of ``site_name``: the site's edges, then its
        cores; no site: the core brokers. Only meaningful when the fleet has sites."""
        if site_name is None:
            return list(self.core_brokers)
        site = self.site(site_name)
        return [*site.edges, *self.cores_of(site)]

    def _holds(self, broker_name: str, brokers: list[str] | None, site: str | None) -> bool:
        if brokers is not None and broker_name not in brokers:
            return False
        return not self.sites or broker_name in self.site_brokers(site)

    def users_of(self, broker_name: str) -> set[str]:
        """Usernames of the active devices and clients allowed on ``broker_name`` (with sites:
        only those of its site, every one of the sites it serves on a core). Computed once per
        fleet object and broker: a broker's rendering asks several times, and at 100,000
        devices each answer costs 0.4 s (a copy of the fleet is another object: computed anew)."""
        known = _USERS_OF.get(id(self))
        if known is None or known[0]() is not self:
            known = _USERS_OF[id(self)] = (weakref.ref(self, _forget_users_of(id(self))), {})
        users = known[1].get(broker_name)
        if users is None:
            users = known[1][broker_name] = frozenset(
                {
                    *(
                        d.id
                        for d in self.active_devices
                        if self._holds(broker_name, d.brokers, d.site)
                    ),
                    *(
                        c.name
                        for c in self.active_clients
                        if self._holds(broker_name, c.brokers, c.site)
                    ),
                }
            )
        return set(users)


# id of a Fleet -> (a weak reference to it, {broker: its users}); an entry goes with its fleet.
_USERS_OF: dict[int, tuple[weakref.ref[Fleet], dict[str, frozenset[str]]]] = {}


def _forget_users_of(key: int) -> Callable[[weakref.ref[Fleet]], None]:
    def forget(ref: weakref.ref[Fleet]) -> None:
        if key in _USERS_OF and _USERS_OF[key][0] is ref:
            del _USERS_OF[key]

    return forget
