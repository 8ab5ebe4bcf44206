"""Per-host settings of each role, with their defaults and a one-line description each.

These models are the single source of truth for role data keys: a key ``mosquitto_<field>`` in
the inventory sets ``MosquittoSettings.<field>``. The roles read them through the validated
fleet (never raw host data), and ``iotfleet keys`` prints the table for the README.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from iotfleet.model.names import check_dns_name, check_mac, is_dns_name
from iotfleet.model.secretref import SecretRef
from iotfleet.model.strict import reject_loose_boolean

Port = Annotated[int, Field(ge=1, le=65535)]
# Ports below this one need privileges the broker's sandbox does not have.
PRIVILEGED_PORTS_END = 1024
Auth = Literal["certificate", "certificate+password", "password"]
LogType = Literal["error", "warning", "notice", "information", "debug", "all"]
DEFAULT_LOG_TYPES: list[LogType] = ["error", "warning", "notice", "information"]

# TLS 1.2 suites: ECDHE key exchange and AEAD only (no CBC, no RSA key exchange). The ECDSA
# suites are what an EC broker certificate uses; the RSA ones serve RSA broker keys.
MIB = 1024 * 1024
# Below 256 MiB, the most an MQTT packet can announce, with room for what the broker holds.
WEBSOCKETS_HEAP_LIMIT = 224 * MIB

STRONG_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)
# Public pools, reachable from any network with internet access; documented as the one
# default an offline plant must change (espgw_ntp_servers).
DEFAULT_NTP_SERVERS = ("pool.ntp.org", "time.cloudflare.com")
# The firmware asks at most this many (the ESP8266 SDK's SNTP keeps 3: SNTP_MAX_SERVERS).
MAX_NTP_SERVERS = 3
STRONG_TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

# max_packet_size = payload limit + this: a PUBLISH topic may be 65535 bytes (its 2-byte length
# field) and MQTT 5 properties (user properties, correlation data) need a few KiB more.
PACKET_HEADROOM = 65535 + 4096
# Default MemoryMax: the broker's own base (~10 MiB RSS idle, plus the retained store of a
# fleet) and, for every connection the listeners allow, 48 KiB: an idle TLS client costs ~15
# KiB on Mosquitto 2.0.11 / OpenSSL 3 (measured: 800 clients), the rest is room for its
# in-flight messages and handshake buffers. Past it the broker is throttled, then restarted,
# instead of the host swapping or the OOM killer picking another service.
MEMORY_BASE_MB = 64
MEMORY_PER_CONNECTION_KB = 48


def canonical_bind_address(value: str) -> str:
    """``value`` written the one way the config, the apply script and the checks compare
    (``::0`` is ``::``), refusing what no host can bind a listener to, without asking the host:
    anything but an IP address, a scoped IPv6 address (``fe80::1%eth0``: Mosquitto takes no
    interface), multicast addresses, and IPv4's reserved 240.0.0.0/4 with the broadcast address
    255.255.255.255. Whether the host has the address is checked at apply (mosquitto-apply),
    before the new configuration goes live."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address: write one of the host's addresses "
            "(e.g. 192.0.2.10 or 2001:db8::10), or leave bind_address out for every address"
        ) from None
    if address.is_multicast:
        raise ValueError(
            f"{value} is a multicast address: a listener binds to an address of the host"
        )
    if isinstance(address, ipaddress.IPv4Address) and address.is_reserved:
        broadcast = address == ipaddress.IPv4Address("255.255.255.255")
        kind = "the broadcast address" if broadcast else "reserved (240.0.0.0/4)"
        raise ValueError(f"{value} is {kind}: a listener binds to an address of the host")
    scope = getattr(address, "scope_id", None)
    if scope:
        raise ValueError(f"{value} names an interface: write the address without %{scope}")
    return str(address)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_loose_boolean(cls, info.field_name, value)


class Listener(_Settings):
    """One network listener of a broker."""

    port: Port = Field(description="TCP port (1024 or above: the sandboxed broker binds no lower)")
    protocol: Literal["mqtt", "websockets"] = Field("mqtt", description="mqtt or websockets")
    bind_address: str | None = Field(
        None,
        description="IP address of the host to listen on; none means every address "
        "(that the host has it is checked at apply, before the new configuration goes live)",
    )
    tls: bool = Field(True, description="TLS on this listener; false only allowed on loopback")
    auth: Auth = Field(
        "certificate",
        description="certificate (CN is the username), certificate+password, or password",
    )

    @field_validator("port")
    @classmethod
    def _unprivileged_port(cls, value: int) -> int:
        # The broker runs as mosquitto in its own user namespace (PrivateUsers=yes) without
        # capabilities: it cannot bind a port below 1024, and would fail at its first start.
        if value < PRIVILEGED_PORTS_END:
            raise ValueError(
                f"{value} is below {PRIVILEGED_PORTS_END}: the sandboxed broker cannot bind "
                "privileged ports; use 1024 or above (8883 for MQTT over TLS)"
            )
        return value

    @field_validator("bind_address")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        return None if value is None else canonical_bind_address(value)

    @model_validator(mode="after")
    def _plain_only_on_loopback(self) -> Listener:
        if not self.tls:
            loopback = (
                self.bind_address is not None
                and ipaddress.ip_address(self.bind_address).is_loopback
            )
            if not loopback:
                raise ValueError(
                    f"listener on port {self.port} has no certificates (tls: false): plain MQTT "
                    "is only allowed with bind_address 127.0.0.1 or ::1"
                )
            if self.auth != "password":
                raise ValueError(
                    f"listener on port {self.port} has no TLS, so it cannot check client "
                    "certificates: set auth: password"
                )
        return self

    @model_validator(mode="after")
    def _websockets_without_certificates(self) -> Listener:
        if self.protocol == "websockets" and self.requires_certificate:
            # Seen with Mosquitto 2.0.11: its websockets listeners ignore crlfile.
            raise ValueError(
                f"websockets listener on port {self.port}: Mosquitto does not check the CRL "
                "there, so a revoked certificate would get in; set auth: password"
            )
        return self

    @property
    def requires_certificate(self) -> bool:
        return self.auth in ("certificate", "certificate+password")

    @property
    def requires_password(self) -> bool:
        return self.auth in ("password", "certificate+password")


class MosquittoSettings(_Settings):
    """``mosquitto_*`` keys: how a broker host runs Mosquitto."""

    listeners: list[Listener] = Field(
        default_factory=lambda: [Listener(port=8883)],
        description="listeners; default one TLS listener on 8883 with client certificates",
    )
    dns_names: list[str] | None = Field(
        None, description="DNS names clients use (certificate SANs); default: the host's name"
    )
    ip_addresses: list[str] | None = Field(
        None, description="IP addresses clients use (certificate SANs); default: ssh_hostname"
    )
    package_version: str | None = Field(
        None, description="pin the Debian package version (e.g. 2.0.11-1.2+deb12u1)"
    )
    max_connections: int = Field(20000, ge=1, le=1_000_000, description="per listener")
    message_size_limit: int = Field(
        262144, ge=1, le=268435455, description="largest accepted payload in bytes"
    )
    persistence: bool = Field(True, description="keep retained messages and sessions on disk")
    log_types: list[LogType] = Field(
        default_factory=lambda: list(DEFAULT_LOG_TYPES),
        description="what Mosquitto logs (to the journal)",
    )
    tls_version: Literal["tlsv1.2", "tlsv1.3"] = Field(
        "tlsv1.2", description="lowest TLS version accepted"
    )
    ciphers: str = Field(STRONG_TLS12_CIPHERS, description="TLS 1.2 cipher list (AEAD + ECDHE)")
    ciphers_tls13: str = Field(STRONG_TLS13_SUITES, description="TLS 1.3 cipher suites")
    username_as_clientid: bool = Field(
        True,
        description="client id := username, so nobody can take over another client's session",
    )
    password_min_length: int = Field(
        16, ge=8, le=1024, description="shortest password accepted for MQTT users"
    )
    # Mosquitto verifies passwords on its single event-loop thread, twice per login here (the
    # iotfleet plugin, then Mosquitto's own check): 10000 PBKDF2-SHA512 rounds cost ~12 ms per
    # verify on a 2-core EPYC VM, ~40 password logins/s per broker, and 100x Mosquitto's 101 for
    # anyone guessing offline from a stolen hash. Much more would let a burst of reconnects (or
    # an attacker's wrong passwords) stall every other client.
    password_iterations: int = Field(
        10000,
        ge=1000,
        le=1_000_000,
        description="PBKDF2-SHA512 rounds of each $7$ password hash (cost per login)",
    )
    max_inflight_messages: int = Field(
        20, ge=1, le=65535, description="QoS 1/2 messages in flight to one client at once"
    )
    max_queued_messages: int = Field(
        1000, ge=1, le=1_000_000, description="messages queued for one client beyond those"
    )
    max_queued_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=1 << 31,
        description="bytes queued for one client (whichever of count or bytes is reached first)",
    )
    memory_max_mb: int | None = Field(
        None,
        ge=64,
        le=1 << 20,
        description="MemoryMax of the broker in MiB (MemoryHigh at 90%); default: "
        "64 MiB + 48 KiB per allowed connection",
    )
    health_timeout: int = Field(
        20, ge=2, le=300, description="seconds a (re)started broker has to answer health checks"
    )
    apply_lock_wait: int = Field(
        300,
        ge=0,
        le=3600,
        description="seconds an apply waits while another rollout applies on the same broker",
    )

    @property
    def max_packet_size(self) -> int:
        """Largest MQTT packet accepted, checked against the fixed header before Mosquitto
        allocates the packet, even before authentication (a CONNECT announcing 256 MiB is
        closed, not buffered): the payload limit plus room for the rest of a PUBLISH."""
        return self.message_size_limit + PACKET_HEADROOM

    @property
    def memory_ceiling_mb(self) -> int:
        """MemoryMax in MiB: the inventory's, or sized to the connection limit."""
        if self.memory_max_mb is not None:
            return self.memory_max_mb
        connections = self.max_connections * len(self.listeners)
        return MEMORY_BASE_MB + -(-connections * MEMORY_PER_CONNECTION_KB // 1024)

    @property
    def heap_limit(self) -> int:
        """Mosquitto's own ``memory_limit`` in bytes: allocations past it are refused (the
        client that asked is disconnected) before the kernel's MemoryMax would kill the broker.

        With a websockets listener it stays below the largest MQTT packet (256 MiB): Mosquitto
        2.0 (2.0.11 to 2.0.20 at least) allocates what a websockets packet announces without
        applying ``max_packet_size``, so only this limit refuses a forged CONNECT there.
        """
        limit = self.memory_high_mb * MIB
        if any(listener.protocol == "websockets" for listener in self.listeners):
            limit = min(limit, WEBSOCKETS_HEAP_LIMIT)
        return limit

    @property
    def memory_high_mb(self) -> int:
        """MemoryHigh in MiB: throttled (reclaimed hard) from 90% of the ceiling."""
        return self.memory_ceiling_mb * 9 // 10

    @field_validator("listeners")
    @classmethod
    def _listeners_sane(cls, listeners: list[Listener]) -> list[Listener]:
        if not listeners:
            raise ValueError("at least one listener is needed")
        seen: set[tuple[str | None, int]] = set()
        for listener in listeners:
            key = (listener.bind_address, listener.port)
            if key in seen or (None, listener.port) in seen:
                raise ValueError(f"port {listener.port} is used by two listeners")
            seen.add(key)
        if not any(listener.tls and listener.protocol == "mqtt" for listener in listeners):
            # The health check speaks MQTT over TLS, and Mosquitto 2.0.11 refuses to start
            # with websockets listeners only.
            raise ValueError("every broker needs at least one TLS listener with protocol mqtt")
        return listeners

    @field_validator("dns_names")
    @classmethod
    def _dns(cls, names: list[str] | None) -> list[str] | None:
        return None if names is None else [check_dns_name(n) for n in names]

    @field_validator("ip_addresses")
    @classmethod
    def _ips(cls, addresses: list[str] | None) -> list[str] | None:
        return None if addresses is None else [str(ipaddress.ip_address(a)) for a in addresses]

    @field_validator("ciphers", "ciphers_tls13")
    @classmethod
    def _no_weak_ciphers(cls, value: str) -> str:
        weak = [c for c in value.split(":") if _is_weak_cipher(c)]
        if weak:
            raise ValueError(f"weak ciphers not allowed: {', '.join(weak)} (use AEAD with ECDHE)")
        return value


def _is_weak_cipher(name: str) -> bool:
    upper = name.upper()
    if upper.startswith("TLS_"):  # TLS 1.3 suites are all AEAD
        return not any(tag in upper for tag in ("GCM", "CHACHA20", "CCM"))
    return not upper.startswith(("ECDHE-", "DHE-")) or not any(
        tag in upper for tag in ("GCM", "CHACHA20", "CCM")
    )


class FirewallSettings(_Settings):
    """``firewall_*`` keys: nftables on brokers."""

    enabled: bool = Field(True, description="manage an nftables input filter on brokers")
    ssh_port: Port | None = Field(None, description="SSH port to keep open; default: ssh_port")
    ssh_sources: list[str] = Field(
        default_factory=list, description="networks allowed to SSH (CIDR); empty means anywhere"
    )
    extra_tcp_ports: list[Port] = Field(
        default_factory=list, description="more TCP ports to open (e.g. a metrics exporter)"
    )
    # A classroom of 30 behind one NAT address connects in a burst when the lesson starts
    # (a client and a dashboard each: 60) and reconnects at about one a second after a broker
    # restart; a password guesser from one address gets 60 tries, then one a second.
    password_rate: int = Field(
        60,
        ge=0,
        le=1_000_000,
        description="new connections per minute one source (IPv4 address, IPv6 /64) may open "
        "to password listeners, beyond the burst; 0 turns the limit off",
    )
    password_burst: int = Field(
        60,
        ge=1,
        le=1_000_000,
        description="connections one source may open at once to password listeners before "
        "the rate applies (sized for a classroom behind one NAT address)",
    )
    password_limit_exempt: list[str] = Field(
        default_factory=list,
        description="networks (CIDR) not rate-limited on password listeners, e.g. the host "
        "running `iotfleet check` (its TLS scans open hundreds of connections)",
    )

    @field_validator("ssh_sources", "password_limit_exempt")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(v, strict=False)) for v in values]


# Key exchange, ciphers and MACs that OpenSSH 9.2 (bookworm) and 10.0 (trixie) accept and that
# paramiko (pyinfra, the flash relay) can use: curve25519/DH group16 + GEX, AES-CTR/GCM, ETM MACs.
MODERN_SSH_KEX = [
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group-exchange-sha256",
]
MODERN_SSH_CIPHERS = [
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]
MODERN_SSH_MACS = [
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "umac-128-etm@openssh.com",
]
_SSH_ALGORITHM = r"^[a-z0-9][a-z0-9@.+-]*$"


class SshHardeningSettings(_Settings):
    """``ssh_hardening_*`` keys: an opt-in sshd drop-in on brokers (keys only, no forwarding)."""

    enabled: bool = Field(
        False,
        description="harden sshd on brokers: keys only, no forwarding or tunnels, modern "
        "algorithms (the inventory must connect with a key)",
    )
    permit_root_login: Literal["prohibit-password", "no"] = Field(
        "prohibit-password",
        description="root logs in with a key only (the rollout connects as root) or never",
    )
    max_auth_tries: int = Field(
        3, ge=1, le=10, description="authentication attempts per connection"
    )
    login_grace_time: int = Field(
        30, ge=5, le=600, description="seconds a client has to log in before it is cut"
    )
    max_startups: str = Field(
        "10:30:60",
        pattern=r"^\d+(:\d+:\d+)?$",
        description="unauthenticated connections before sshd drops new ones (start:rate:full)",
    )
    kex_algorithms: list[Annotated[str, Field(pattern=_SSH_ALGORITHM)]] = Field(
        default_factory=lambda: list(MODERN_SSH_KEX),
        min_length=1,
        description="key exchange algorithms sshd offers",
    )
    ciphers: list[Annotated[str, Field(pattern=_SSH_ALGORITHM)]] = Field(
        default_factory=lambda: list(MODERN_SSH_CIPHERS),
        min_length=1,
        description="ciphers sshd offers",
    )
    macs: list[Annotated[str, Field(pattern=_SSH_ALGORITHM)]] = Field(
        default_factory=lambda: list(MODERN_SSH_MACS),
        min_length=1,
        description="MACs sshd offers",
    )


class Board(_Settings):
    """One ESP8266 board attached to a flash station."""

    port: str = Field(description="serial port: /dev/ttyUSB0, socket://host:port, rfc2217://…")
    device: str = Field(description="id of the device (fleet_devices) this board becomes")
    mac: str | None = Field(None, description="expected MAC; must match the board when given")
    firmware: Path | None = Field(None, description="firmware image for this board")
    layout: str | None = Field(None, description="flash layout for this board (e.g. 4M2M)")
    flash_file: Path | None = Field(
        None, description="emulated board only: the file holding its flash (set by the lab)"
    )

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        return None if value is None else check_mac(value)

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        if "://" in value:
            scheme = value.split("://", 1)[0]
            if scheme not in ("socket", "rfc2217"):
                raise ValueError(
                    f"{value!r}: a network serial port is socket://HOST:PORT or rfc2217://HOST:PORT"
                )
        elif not value.startswith("/") or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(
                f"{value!r} is neither a device path of the station (/dev/ttyUSB0) nor a "
                "network serial port (socket://, rfc2217://)"
            )
        return value


class GatewaySettings(_Settings):
    """``espgw_*`` keys: flash stations and the gateways they flash."""

    boards: list[Board] = Field(default_factory=list, description="boards on this station")
    firmware: Path = Field(
        Path("files/firmware/iotfleet-gateway.bin"), description="default firmware image"
    )
    layout: str = Field("4M2M", description="default flash layout")
    wifi_ssid: str | None = Field(None, description="Wi-Fi network gateways join (required)")
    wifi_passphrase: SecretRef | None = Field(
        None, description="Wi-Fi passphrase: env:NAME, file:PATH or generated (required)"
    )
    brokers: list[str] | None = Field(
        None, description="broker hosts gateways connect to; default: every broker"
    )
    broker_port: Port = Field(8883, description="broker port gateways connect to")
    ntp_servers: Annotated[list[str], Field(min_length=1, max_length=MAX_NTP_SERVERS)] = Field(
        default_factory=lambda: list(DEFAULT_NTP_SERVERS),
        description="time servers gateways ask (certificates need the date); on a network "
        "without internet access, name the plant's own NTP server",
    )
    parallel: int = Field(8, ge=1, le=64, description="boards flashed at once")
    reenroll: bool = Field(False, description="accept a new MAC for an enrolled device id")
    baud: int = Field(460800, ge=9600, le=4_000_000, description="serial speed for flashing")

    @field_validator("wifi_passphrase", mode="before")
    @classmethod
    def _secret(cls, value: object) -> SecretRef | None:
        return None if value is None else SecretRef.parse(value)

    @field_validator("ntp_servers")
    @classmethod
    def _ntp(cls, servers: list[str]) -> list[str]:
        return [_host_name_or_address(s) for s in servers]

    @field_validator("wifi_ssid")
    @classmethod
    def _ssid(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value.encode()) <= 32:
            raise ValueError("a Wi-Fi SSID is 1..32 bytes")
        return value


def _host_name_or_address(value: str) -> str:
    """An IP address, or a host name whose last label is not all digits (``10.0.0.300`` is a
    mistyped address, not a name the board could look up)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if is_dns_name(value) and not value.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return check_dns_name(value)
    raise ValueError(f"{value!r} is neither an IP address nor a host name")


ROLE_SETTINGS: dict[str, type[_Settings]] = {
    "mosquitto": MosquittoSettings,
    "firewall": FirewallSettings,
    "ssh_hardening": SshHardeningSettings,
    "espgw": GatewaySettings,
}
