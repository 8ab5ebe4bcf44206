"""Mosquitto ACL file from the fleet, deny by default.

Every user gets an explicit block: Mosquitto denies whatever no line allows. ``pattern`` lines
are never used because they apply to every user; ``%u`` in a role is expanded per user here.
"""

from __future__ import annotations

from collections.abc import Iterable

from iotfleet.device.contract import (
    CERTIFICATE_TOPIC_ROOT,
    certificate_topic,
    csr_topic,
    rekey_topic,
)
from iotfleet.model import Device, Fleet, Role, Site
from iotfleet.model.own_identities import (
    DELIVERY_IDENTITY,
    PROBE_DEVICES,
    bridge_identity_name,
    bridge_state_topic,
    health_identity_name,
    health_topic,
    probe_prefix,
)

HEADER = "# managed by iotfleet: rendered from the inventory, edits are overwritten\n"


def prefix_rules(prefix: str) -> list[tuple[str, str]]:
    """What any device may do under its own topic prefix, and nothing else."""
    return [
        ("write", f"{prefix}/telemetry/#"),
        ("write", f"{prefix}/status"),
        ("read", f"{prefix}/commands/#"),
    ]


def certificate_topics(fleet: Fleet) -> list[str]:
    """Every active device's certificate delivery, re-key and CSR topics (retained by design: a
    gateway offline during a renewal or re-key picks it up when it comes back, and the CSR waits
    for the next rollout)."""
    return [
        topic(device.id)
        for device in fleet.active_devices
        for topic in (certificate_topic, rekey_topic, csr_topic)
    ]


def delivery_rules(fleet: Fleet, broker_name: str) -> list[tuple[str, str]]:
    """iotfleet's delivery identity: write each device's certificate and re-key topics, read its
    status and its CSR topic."""
    allowed = fleet.users_of(broker_name)
    rules: list[tuple[str, str]] = []
    for device in fleet.active_devices:
        if device.id in allowed:
            rules.append(("write", certificate_topic(device.id)))
            rules.append(("write", rekey_topic(device.id)))
            rules.append(("read", csr_topic(device.id)))
            rules.append(("read", f"{fleet.topic_prefix(device)}/status"))
    return rules


def site_rules(fleet: Fleet, site: Site) -> list[tuple[str, str]]:
    """(access, topic) of every active device of ``site``: what its bridges may carry, as the
    device ACL says it (the cores' ACL confines each bridge identity to exactly these)."""
    rules: list[tuple[str, str]] = []
    for device in sorted(fleet.active_devices, key=lambda d: d.id):
        if device.site == site.name:
            rules.extend(prefix_rules(fleet.topic_prefix(device)))
    return rules


def core_bridge_users(fleet: Fleet, core_name: str) -> dict[str, list[tuple[str, str]]]:
    """``{bridge identity: rules}`` for the ACL of core ``core_name``: each edge bridging to it
    may write its site's devices' telemetry and status and read their commands, nothing else."""
    users: dict[str, list[tuple[str, str]]] = {}
    for site in fleet.sites:
        if site.bridge_revoked is not None or core_name not in fleet.cores_of(site):
            continue
        rules = site_rules(fleet, site)
        for edge in site.edges:
            users[bridge_identity_name(edge)] = list(rules)
    return users


def device_rules(fleet: Fleet, device: Device) -> list[tuple[str, str]]:
    """(access, topic) pairs of one device: its own prefix only, its certificate and re-key
    topics (read), its CSR topic (write), plus its extra roles."""
    rules = prefix_rules(fleet.topic_prefix(device))
    rules.append(("read", certificate_topic(device.id)))
    rules.append(("read", rekey_topic(device.id)))
    rules.append(("write", csr_topic(device.id)))
    for role in device.roles:
        rules.extend(_role_rules(fleet.roles[role], device.id))
    return rules


def _role_rules(role: Role, username: str) -> list[tuple[str, str]]:
    def expand(topic: str) -> str:
        return topic.replace("%u", username)

    return [
        *(("read", expand(t)) for t in role.read),
        *(("write", expand(t)) for t in role.write),
        *(("readwrite", expand(t)) for t in role.readwrite),
    ]


def health_rules(fleet: Fleet, broker_name: str) -> list[tuple[str, str]]:
    """The broker's health identity: its own health topic; on an edge with a bridge, reading its
    bridge's state too (``iotfleet check`` reads it locally as that identity)."""
    rules = [("readwrite", health_topic(broker_name))]
    site = fleet.site_of_edge(broker_name)
    if site is not None and site.bridge_revoked is None:
        rules.append(("read", bridge_state_topic(broker_name)))
    return rules


def acl_rules(fleet: Fleet, broker_name: str) -> dict[str, list[tuple[str, str]]]:
    """``{username: [(access, topic), ...]}`` for every active user of one broker."""
    users: dict[str, list[tuple[str, str]]] = {}
    rules: list[tuple[str, str]]
    allowed = fleet.users_of(broker_name)
    for device in fleet.active_devices:
        if device.id in allowed:
            users[device.id] = device_rules(fleet, device)
    for client in fleet.active_clients:
        if client.name not in allowed:
            continue
        rules = []
        for role in client.roles:
            rules.extend(_role_rules(fleet.roles[role], client.name))
        # Even an admin's "#" must not reach the certificate topics: only iotfleet delivers.
        # (Mosquitto checks "deny" lines before the others.)
        rules.append(("deny", f"{CERTIFICATE_TOPIC_ROOT}/#"))
        users[client.name] = rules
    users[health_identity_name(broker_name)] = health_rules(fleet, broker_name)
    users[DELIVERY_IDENTITY] = delivery_rules(fleet, broker_name)
    users.update(core_bridge_users(fleet, broker_name))
    for probe in PROBE_DEVICES:
        users[probe] = prefix_rules(probe_prefix(fleet.topic_root, probe))
    return users


def render_acl(users: dict[str, list[tuple[str, str]]]) -> str:
    """The ACL file text, users sorted so the same fleet renders the same bytes."""
    return HEADER + "".join(_user_block(u, users[u]) for u in sorted(users))


def _user_block(username: str, rules: Iterable[tuple[str, str]]) -> str:
    lines = [f"\nuser {username}\n"]
    seen: set[tuple[str, str]] = set()
    for access, topic in rules:
        if (access, topic) not in seen:
            seen.add((access, topic))
            lines.append(f"topic {access} {topic}\n")
    return "".join(lines)


def parse_acl(text: str) -> tuple[dict[str, set[tuple[str, str]]], list[str]]:
    """``({user: {(access, topic)}}, [lines that apply to everyone])``: what ``render_acl``
    wrote, read back the way Mosquitto reads it (an ACL found on a host, for the checks)."""
    users: dict[str, set[tuple[str, str]]] = {}
    general: list[str] = []
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            current = rest
            users.setdefault(current, set())
        elif keyword == "pattern":
            general.append(line)
        elif keyword == "topic":
            access, _, topic = rest.partition(" ")
            if access not in ("read", "write", "readwrite", "deny"):
                access, topic = "readwrite", rest
            if current is None:
                general.append(line)
            else:
                users[current].add((access, topic.strip()))
    return users, general
