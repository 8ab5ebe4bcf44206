"""An edge broker's bridge to its site's core brokers: rendered from the fleet, parsed back.

One bridge per edge (Mosquitto ``connection`` block), over TLS 1.2+ with the edge's own bridge
identity (a client certificate of the fleet PKI, never the broker's server key), to the site's
cores in failover order (``address core1:port core2:port``, ``round_robin false``: the first
is the main connection, the others are tried in turn when it fails, and the bridge keeps
trying to get back to the first). What crosses is derived from the device ACL itself
(``acl.prefix_rules``): what a device may write (telemetry, status) goes out, what it may read
(commands) comes in, for the site's active devices only, QoS 1; nothing else crosses.
``cleansession false`` with fixed client ids keeps the bridge's session and its QoS 1
messages on both brokers across restarts and reconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from iotfleet.model import Fleet, Site
from iotfleet.model.addresses import broker_dns_names, broker_ip_addresses
from iotfleet.model.own_identities import bridge_identity_name
from iotfleet.model.topology import bridge_listener_port
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import site_rules

Direction = Literal["in", "out", "both"]
# What a device may do (its ACL) -> which way that traffic crosses a bridge.
DIRECTION_OF_ACCESS: dict[str, Direction] = {"write": "out", "read": "in"}
BRIDGE_QOS = 1
LOCAL_SUFFIX = ".local"


@dataclass(frozen=True)
class BridgeTopic:
    pattern: str
    direction: Direction
    qos: int = BRIDGE_QOS


@dataclass(frozen=True)
class Bridge:
    """One ``connection`` block of an edge broker's mosquitto.conf."""

    connection: str
    addresses: tuple[tuple[str, int], ...]
    remote_clientid: str
    local_clientid: str
    cafile: str
    certfile: str
    keyfile: str
    tls_version: str
    topics: tuple[BridgeTopic, ...]
    # Fixed settings, rendered explicitly so that a check reads them back from the file.
    options: tuple[tuple[str, str], ...] = field(
        default=(
            ("round_robin", "false"),
            ("start_type", "automatic"),
            ("cleansession", "false"),
            ("bridge_protocol_version", "mqttv311"),
            ("try_private", "true"),
            ("bridge_insecure", "false"),
            ("notifications", "true"),
            ("notifications_local_only", "true"),
        )
    )


def bridge_topics(fleet: Fleet, site: Site) -> list[BridgeTopic]:
    """Telemetry and status out, commands in, for the site's active devices."""
    return [
        BridgeTopic(topic, DIRECTION_OF_ACCESS[access]) for access, topic in site_rules(fleet, site)
    ]


def bridge_host(fleet: Fleet, core_name: str) -> str:
    """The name an edge connects to for ``core_name``: one its certificate carries (the bridge
    verifies it), ``ssh_hostname`` when that is one, else its first DNS name, else its first IP."""
    core = fleet.broker(core_name)
    names = [*broker_dns_names(core), *broker_ip_addresses(core)]
    if core.ssh_hostname in names:
        return core.ssh_hostname
    if not names:
        raise ValueError(f"core broker {core_name} has no certificate name to connect to")
    return names[0]


def edge_bridge(
    fleet: Fleet, edge_name: str, files: Mapping[str, str] | None = None
) -> Bridge | None:
    """The bridge of edge broker ``edge_name`` (none for a core, a fleet without sites or a
    site whose ``bridge_revoked`` cut it off: its edges serve their devices locally only);
    ``files`` maps live paths to where those files are instead (a test run)."""
    site = fleet.site_of_edge(edge_name)
    if site is None or site.bridge_revoked is not None:
        return None
    files = files or {}
    identity = bridge_identity_name(edge_name)
    edge = fleet.broker(edge_name)
    return Bridge(
        connection=identity,
        addresses=tuple(
            (bridge_host(fleet, core), bridge_listener_port(fleet.broker(core)))
            for core in fleet.cores_of(site)
        ),
        remote_clientid=identity,
        local_clientid=identity + LOCAL_SUFFIX,
        cafile=files.get(layout.CA_CHAIN, layout.CA_CHAIN),
        certfile=files.get(layout.BRIDGE_CERT, layout.BRIDGE_CERT),
        keyfile=files.get(layout.BRIDGE_KEY, layout.BRIDGE_KEY),
        tls_version=edge.mosquitto.tls_version,
        topics=tuple(bridge_topics(fleet, site)),
    )


def _address(host: str, port: int) -> str:
    # No brackets for IPv6: Mosquitto splits host and port at the last colon and would look
    # up "[2001:db8::1]" as a name.
    return f"{host}:{port}"


def render_bridge(bridge: Bridge) -> str:
    """The ``connection`` block, each option on its own line, in a fixed order."""
    lines = [
        "",
        "# Bridge to the site's core brokers (first address main, the others failover).",
        f"connection {bridge.connection}",
        "address " + " ".join(_address(h, p) for h, p in bridge.addresses),
        f"remote_clientid {bridge.remote_clientid}",
        f"local_clientid {bridge.local_clientid}",
        *(f"{option} {value}" for option, value in bridge.options),
        f"bridge_cafile {bridge.cafile}",
        f"bridge_certfile {bridge.certfile}",
        f"bridge_keyfile {bridge.keyfile}",
        f"bridge_tls_version {bridge.tls_version}",
        *(f"topic {t.pattern} {t.direction} {t.qos}" for t in bridge.topics),
    ]
    return "\n".join(lines) + "\n"


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")  # as Mosquitto reads it: the port after the last colon
    return host, int(port)


_FIELDS = {
    "remote_clientid": "remote_clientid",
    "clientid": "remote_clientid",
    "local_clientid": "local_clientid",
    "bridge_cafile": "cafile",
    "bridge_certfile": "certfile",
    "bridge_keyfile": "keyfile",
    "bridge_tls_version": "tls_version",
}


@dataclass
class _Block:
    connection: str
    addresses: tuple[tuple[str, int], ...] = ()
    topics: list[BridgeTopic] = field(default_factory=list)
    options: list[tuple[str, str]] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)

    def bridge(self) -> Bridge:
        return Bridge(
            connection=self.connection,
            addresses=self.addresses,
            topics=tuple(self.topics),
            options=tuple(self.options),
            **{name: self.values.get(name, "") for name in set(_FIELDS.values())},
        )


def _topic(value: str) -> BridgeTopic:
    parts = value.split()
    direction = parts[1] if len(parts) > 1 else "out"
    if direction not in ("in", "out", "both"):
        raise ValueError(f"topic {value!r}: direction {direction!r} is not in, out or both")
    return BridgeTopic(parts[0], direction, int(parts[2]) if len(parts) > 2 else 0)  # type: ignore[arg-type]


def parse_bridges(text: str) -> list[Bridge]:
    """Every ``connection`` block of a mosquitto.conf, read back the way Mosquitto reads it
    (a block runs until the next ``connection`` or the end; options a block does not set keep
    Mosquitto's defaults and are absent from ``options``)."""
    blocks: list[_Block] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition(" ")
        value = value.strip()
        if option == "connection":
            blocks.append(_Block(value))
        elif not blocks:
            continue  # the broker's own settings, before any bridge
        elif option in ("address", "addresses"):
            blocks[-1].addresses = tuple(_parse_address(a) for a in value.split())
        elif option == "topic":
            blocks[-1].topics.append(_topic(value))
        elif option in _FIELDS:
            blocks[-1].values[_FIELDS[option]] = value
        else:
            blocks[-1].options.append((option, value))
    return [block.bridge() for block in blocks]
