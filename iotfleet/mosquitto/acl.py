"""Mosquitto ACL file from the fleet, deny by default.

Deny by default: Mosquitto denies whatever no line allows. What every device may do under the
topic contract (its default prefix ``<root>/<id>``, its certificate, re-key and CSR topics) is
said once, by ``pattern`` lines with ``%u``, so the file does not grow with the fleet. Patterns
apply to every user Mosquitto lets in: every other identity of the broker (clients, iotfleet's
own identities, devices with their own prefix) gets a block that denies what the patterns would
give it beyond its inventory grants (Mosquitto checks a user's ``deny`` lines before anything
else). Logins are confined to the broker's identities by the plugin (``identities_file``), so
no unknown name (a device of another site) reaches the patterns. ``%u`` in a role is expanded
per user here. ``acl_rules`` is what each user may do; ``acl_file`` is how the file says it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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


PATTERN_USER = "%u"


def device_patterns(fleet: Fleet) -> list[tuple[str, str]]:
    """(access, topic) of the ``pattern`` lines: any device's own topics, ``%u`` its name."""
    return device_rules_of(f"{fleet.topic_root}/{PATTERN_USER}", PATTERN_USER)


def device_rules_of(prefix: str, device_id: str) -> list[tuple[str, str]]:
    """The contract's rules of one device under ``prefix``: its topics, its certificate and
    re-key topics (read), its CSR topic (write)."""
    return [
        *prefix_rules(prefix),
        ("read", certificate_topic(device_id)),
        ("read", rekey_topic(device_id)),
        ("write", csr_topic(device_id)),
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
    """iotfleet's delivery identity: write every device's certificate and re-key topics, read
    its status and its CSR topic. Said with ``+``, so the block does not grow with the fleet:
    only the broker's identities log in (the plugin's ``identities_file``), so the topics of a
    name the broker does not hold reach nobody."""
    allowed = fleet.users_of(broker_name)
    custom = sorted(
        {
            f"{device.topic_prefix}/status"
            for device in fleet.active_devices
            if device.topic_prefix and device.id in allowed
        }
    )
    return [
        ("write", certificate_topic("+")),
        ("write", rekey_topic("+")),
        ("read", csr_topic("+")),
        ("read", f"{fleet.topic_root}/+/status"),
        *(("read", topic) for topic in custom),
    ]


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
    rules = device_rules_of(fleet.topic_prefix(device), device.id)
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


def described_by_patterns(device: Device) -> bool:
    """Whether the device patterns give ``device`` exactly its rules: its topics are under the
    fleet's root by its id (no prefix of its own) and it has no extra roles."""
    return device.topic_prefix is None and not device.roles


def acl_rules(
    fleet: Fleet, broker_name: str, *, pattern_devices: bool = True
) -> dict[str, list[tuple[str, str]]]:
    """``{username: [(access, topic), ...]}`` for every active user of one broker;
    ``pattern_devices`` false: without the devices the patterns describe exactly (they need no
    block: at 100,000 devices, computing their rules was most of a broker's rendering)."""
    users: dict[str, list[tuple[str, str]]] = {}
    rules: list[tuple[str, str]]
    allowed = fleet.users_of(broker_name)
    for device in fleet.active_devices:
        if device.id in allowed and (pattern_devices or not described_by_patterns(device)):
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
        users[probe] = device_rules_of(probe_prefix(fleet.topic_root, probe), probe)
    return users


def broker_identities(fleet: Fleet, broker_name: str) -> list[str]:
    """Every username ``broker_name`` holds (sorted): the only names its plugin lets in."""
    allowed = fleet.users_of(broker_name)
    own = acl_rules(fleet, broker_name, pattern_devices=False)  # the users with a block
    return sorted(allowed | set(own))


def render_identities(names: Iterable[str]) -> str:
    """The plugin's ``identities_file``: one username a line."""
    return HEADER + "".join(f"{name}\n" for name in names)


@dataclass(frozen=True)
class AclFile:
    """What the ACL file says: ``patterns`` for every user, then a block per user whose
    grants differ from what the patterns give it."""

    patterns: list[tuple[str, str]]
    users: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def acl_file(fleet: Fleet, broker_name: str) -> AclFile:
    """The ACL of ``broker_name``: the device patterns, and a block only for users the patterns
    do not describe exactly (devices with their own prefix or extra roles, clients, iotfleet's
    own identities). A user's block denies each pattern grant its rules do not hold."""
    patterns = device_patterns(fleet)
    users: dict[str, list[tuple[str, str]]] = {}
    for user, rules in acl_rules(fleet, broker_name, pattern_devices=False).items():
        given = [(a, t.replace(PATTERN_USER, user)) for a, t in patterns]
        block = [rule for rule in _unique(rules) if rule not in given]
        held = _accesses(rules)
        # A pattern grant the user's rules do not cover is denied. Where they hold the topic
        # with another access (read where the pattern gives write), the deny takes theirs
        # too: fail closed; ``pattern_conflicts`` refuses such an inventory up front.
        block += [
            ("deny", topic)
            for access, topic in given
            if not _ACCESS[access] <= held.get(topic, frozenset())
        ]
        if block:
            users[user] = block
    return AclFile(patterns, users)


_ACCESS = {
    "read": frozenset({"read"}),
    "write": frozenset({"write"}),
    "readwrite": frozenset({"read", "write"}),
    "deny": frozenset(),
}


def _accesses(rules: Iterable[tuple[str, str]]) -> dict[str, frozenset[str]]:
    """``{topic: the accesses the rules allow on exactly that topic}``."""
    held: dict[str, frozenset[str]] = {}
    for access, topic in rules:
        held[topic] = held.get(topic, frozenset()) | _ACCESS[access]
    return held


def pattern_conflicts(fleet: Fleet) -> list[str]:
    """Devices and clients whose own rules name a topic of the device patterns (their own
    ``devices/<name>/...``) with other access than the pattern's: Mosquitto cannot say that
    (a ``deny`` line takes every access away, and nothing takes back what the pattern gives),
    so the inventory is refused. One line per user and topic."""
    # A device the patterns describe exactly holds each pattern topic with the pattern's own
    # access: it cannot conflict (and at 100,000 devices its rules cost 2 s to compute).
    owners = [
        *(
            (f"device {d.id}", d.id, device_rules(fleet, d))
            for d in fleet.active_devices
            if not described_by_patterns(d)
        ),
        *(
            (
                f"client {c.name}",
                c.name,
                [rule for role in c.roles for rule in _role_rules(fleet.roles[role], c.name)],
            )
            for c in fleet.active_clients
        ),
    ]
    problems = []
    patterns = device_patterns(fleet)
    for who, name, rules in owners:
        held = _accesses(rules)
        for access, pattern in patterns:
            topic = pattern.replace(PATTERN_USER, name)
            if topic in held and not _ACCESS[access] <= held[topic]:
                problems.append(
                    f"{who}: its roles grant {'/'.join(sorted(held[topic]))} on {topic}, "
                    f"which every device has with {access} (an ACL pattern): grant "
                    f"readwrite or nothing there, or rename it"
                )
    return problems


def effective_rules(acl: AclFile, user: str) -> set[tuple[str, str]]:
    """What ``acl`` grants ``user`` (allow lines of its block and the patterns, minus the
    pattern grants its block denies by the same topic), as ``acl_rules`` says it."""
    block = acl.users.get(user, [])
    given = [(a, t.replace(PATTERN_USER, user)) for a, t in acl.patterns]
    given_topics = {topic for _, topic in given}
    denied = {topic for access, topic in block if access == "deny"}
    # Mosquitto checks a user's deny lines first: a denied topic's own allows are dead too.
    own = {
        (a, t)
        for a, t in block
        if (a == "deny" and t not in given_topics) or (a != "deny" and t not in denied)
    }
    return own | {(a, t) for a, t in given if t not in denied}


def _unique(rules: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(rules))


def render_acl(acl: AclFile) -> str:
    """The ACL file text: patterns, then users sorted so the same fleet renders the same
    bytes."""
    patterns = "".join(f"pattern {access} {topic}\n" for access, topic in acl.patterns)
    return HEADER + patterns + "".join(_user_block(u, acl.users[u]) for u in sorted(acl.users))


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
    wrote, read back the way Mosquitto reads it (an ACL found on a host, for the checks; the
    ``pattern`` lines are among the second)."""
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


def read_acl(text: str) -> tuple[AclFile, list[str]]:
    """``(the ACL file, its lines for every user other than patterns)``: an ACL found on a
    host, read back as ``acl_file`` describes one (for ``effective_rules``)."""
    users, general = parse_acl(text)
    patterns = [pattern_rule(line) for line in general if line.startswith("pattern ")]
    others = [line for line in general if not line.startswith("pattern ")]
    return AclFile(patterns, {user: sorted(rules) for user, rules in users.items()}), others


def pattern_rule(line: str) -> tuple[str, str]:
    """``(access, topic)`` of a ``pattern`` line (no access word: readwrite)."""
    rest = line.removeprefix("pattern ").strip()
    access, _, topic = rest.partition(" ")
    if access not in ("read", "write", "readwrite", "deny"):
        return "readwrite", rest
    return access, topic.strip()
