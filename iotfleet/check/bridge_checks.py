"""Bridges of a multi-site fleet, judged: each edge's bridge configuration, identity and state,
and each core's ACL for the bridge identities (pure functions over what was read on a host).

The outside attack (a site's bridge identity at a core, trying another site's topics) lives in
``bridge_attacks.py``; reading the facts on a host in ``host_facts.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotfleet.check.host_facts import TcpConnection
from iotfleet.model import Fleet
from iotfleet.model.own_identities import BRIDGE_PREFIX, bridge_identity_name
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import core_bridge_users, device_patterns, effective_rules, read_acl
from iotfleet.mosquitto.bridge import Bridge, edge_bridge, parse_bridges

# bridge_tls_version values Mosquitto takes that are TLS 1.2 or later.
STRONG_TLS_VERSIONS = ("tlsv1.2", "tlsv1.3")
BRIDGE_URI_PREFIX = "urn:iotfleet:bridge:"


def bridge_config_problems(host: str, fleet: Fleet, *config_texts: str) -> list[str]:
    """The ``connection`` blocks of the edge's configuration (the main file, then each
    ``include_dir`` file) against the bridge the inventory derives: one bridge, named and
    logged in as the edge's own identity, TLS 1.2+ verified against the fleet's CA to a
    core's certificate listener, exactly the site's topics."""
    expected = edge_bridge(fleet, host)
    try:
        found = [bridge for text in config_texts for bridge in parse_bridges(text)]
    except ValueError as exc:
        return [f"the bridge configuration on {host} cannot be read: {exc}"]
    if expected is None:
        return [
            f"{host} bridges ({b.connection}) though the inventory gives it no bridge"
            for b in found
        ]
    if not found:
        return [f"{host} has no bridge (connection {expected.connection}) in its configuration"]
    problems = [
        f"{host} has a bridge the inventory does not give it: connection {b.connection}"
        for b in found
        if b.connection != expected.connection
    ]
    mine = [b for b in found if b.connection == expected.connection]
    if len(mine) > 1:
        problems.append(f"{host} declares connection {expected.connection} {len(mine)} times")
    for bridge in mine[:1]:
        problems += _tls_problems(host, bridge, expected)
        problems += _identity_config_problems(host, bridge, expected)
        problems += _topic_problems(host, bridge, expected)
    return problems


def _tls_problems(host: str, bridge: Bridge, expected: Bridge) -> list[str]:
    where = f"the bridge of {host} ({bridge.connection})"
    problems = []
    if not bridge.cafile:
        problems.append(f"{where} is plain text: no bridge_cafile (no TLS to the core)")
    elif bridge.cafile != expected.cafile:
        problems.append(
            f"{where} verifies the core with {bridge.cafile}, not the fleet's CA chain "
            f"{expected.cafile}"
        )
    options = dict(bridge.options)
    if options.get("bridge_insecure", "false") != "false":
        problems.append(f"{where} does not verify the core's name (bridge_insecure true)")
    version = bridge.tls_version or "(Mosquitto's default)"
    if bridge.tls_version not in STRONG_TLS_VERSIONS:
        problems.append(f"{where} allows TLS below 1.2 (bridge_tls_version {version})")
    elif bridge.tls_version != expected.tls_version:
        problems.append(
            f"{where} uses bridge_tls_version {version}, the inventory {expected.tls_version}"
        )
    addresses = set(expected.addresses)
    for address, port in bridge.addresses:
        if (address, port) not in addresses:
            by_host = {h: p for h, p in expected.addresses}
            known = (
                f"{address}'s TLS certificate listener is port {by_host[address]}"
                if address in by_host
                else "it is not one of the site's core brokers"
            )
            problems.append(f"{where} connects to {address}:{port}: {known}")
    if list(bridge.addresses) != list(expected.addresses):
        wanted = " ".join(f"{h}:{p}" for h, p in expected.addresses)
        problems.append(f"{where} has addresses {_addresses(bridge)}, the inventory {wanted}")
    for option, value in expected.options:
        if option == "bridge_insecure":
            continue
        if options.get(option) != value:
            problems.append(f"{where} has {option} {options.get(option, '(unset)')}, not {value}")
    return problems


def _addresses(bridge: Bridge) -> str:
    return " ".join(f"{h}:{p}" for h, p in bridge.addresses) or "(none)"


def _identity_config_problems(host: str, bridge: Bridge, expected: Bridge) -> list[str]:
    where = f"the bridge of {host} ({bridge.connection})"
    problems = []
    for what, found, wanted in (
        ("bridge_certfile", bridge.certfile, expected.certfile),
        ("bridge_keyfile", bridge.keyfile, expected.keyfile),
        ("remote_clientid", bridge.remote_clientid, expected.remote_clientid),
        ("local_clientid", bridge.local_clientid, expected.local_clientid),
    ):
        if found != wanted:
            problems.append(f"{where} has {what} {found or '(unset)'}, not {wanted}")
    return problems


def _topic_problems(host: str, bridge: Bridge, expected: Bridge) -> list[str]:
    where = f"the bridge of {host} ({bridge.connection})"
    found = {(t.pattern, t.direction, t.qos) for t in bridge.topics}
    wanted = {(t.pattern, t.direction, t.qos) for t in expected.topics}
    problems = [
        f"{where} carries {pattern} {direction} (qos {qos}): not a topic of its site's devices"
        for pattern, direction, qos in sorted(found - wanted)
    ]
    problems += [
        f"{where} does not carry {pattern} {direction} (qos {qos}) of its site's devices"
        for pattern, direction, qos in sorted(wanted - found)
    ]
    return problems


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "(no CN)"


def _kind_problems(host: str, cert: x509.Certificate, identity: str) -> list[str]:
    """A bridge certificate: CN = the edge's bridge identity, URI SAN of a bridge, clientAuth."""
    problems = []
    cn = _common_name(cert)
    if cn != identity:
        problems.append(
            f"{layout.BRIDGE_CERT} on {host} is the certificate of {cn!r}, not of the edge's "
            f"bridge identity {identity!r}"
        )
    try:
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not any(u.startswith(BRIDGE_URI_PREFIX) for u in uris):
        problems.append(
            f"{layout.BRIDGE_CERT} on {host} is not a bridge identity (no {BRIDGE_URI_PREFIX}... "
            f"URI; it has {', '.join(uris) or 'none'})"
        )
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            problems.append(f"{layout.BRIDGE_CERT} on {host} is not a client certificate")
    except x509.ExtensionNotFound:
        problems.append(f"{layout.BRIDGE_CERT} on {host} has no extended key usage")
    return problems


def bridge_identity_problems(
    host: str,
    issued_pem: bytes,
    issued_key_pem: bytes,
    cert_on_host: bytes | None,
    key_digest_on_host: str | None,
) -> list[str]:
    """The edge logs in as its own bridge identity: ``bridge.pem`` is the certificate the PKI
    issued to ``iotfleet-bridge-<edge>`` (kind bridge), ``bridge.key`` its key (by digest)."""
    identity = bridge_identity_name(host)
    if cert_on_host is None:
        problems = [f"{layout.BRIDGE_CERT} is missing on {host}"]
    else:
        try:
            cert = x509.load_pem_x509_certificate(cert_on_host)
        except ValueError:
            cert = None
        if cert is None:
            problems = [f"{layout.BRIDGE_CERT} on {host} is not a PEM certificate"]
        else:
            problems = _kind_problems(host, cert, identity)
            issued = x509.load_pem_x509_certificate(issued_pem)
            if not problems and cert != issued:
                problems.append(
                    f"{layout.BRIDGE_CERT} on {host} is not the certificate the fleet PKI "
                    f"issued to {identity} (serial {cert.serial_number:x}, the PKI's "
                    f"{issued.serial_number:x})"
                )
    if key_digest_on_host is None:
        problems.append(f"{layout.BRIDGE_KEY} is missing on {host}")
    elif hashlib.sha256(issued_key_pem).hexdigest() != key_digest_on_host:
        problems.append(f"{layout.BRIDGE_KEY} on {host} is not the key of {identity}")
    return problems


@dataclass(frozen=True)
class BridgeSample:
    """One look at an edge's bridge: ``$SYS/broker/connection/<connection>/state`` (``b"1"``
    connected, None if nothing arrived) and mosquitto's established TCP connections, at
    ``at`` (monotonic seconds)."""

    at: float
    state: bytes | None
    connections: tuple[TcpConnection, ...]


def bridge_state_problems(
    host: str,
    connection: str,
    samples: Sequence[BridgeSample],
    cores: Iterable[str],
    stable_seconds: float,
) -> list[str]:
    """The bridge is connected, to a core of its site (``cores``: ``ip:port`` of their bridge
    listeners), and stays so: the latest sample and one at least ``stable_seconds`` older both
    say connected and hold the same TCP connection to a core (same local port). A bridge that
    reconnects in between (two edges sharing a bridge identity take each other's session at
    the core, over and over) is not stable."""
    topic = f"$SYS/broker/connection/{connection}/state"
    if not samples:
        return [f"the bridge state of {host} was not read"]
    wanted = set(cores)
    last = samples[-1]
    if last.state is None:
        return [f"the bridge state of {host} could not be read ({topic}: nothing arrived)"]
    if last.state.strip() != b"1":
        shown = last.state.decode(errors="replace")
        return [f"the bridge of {host} is not connected ({topic} is {shown!r})"]
    to_cores = {c for c in last.connections if c.peer in wanted}
    if not to_cores:
        return [
            f"the bridge of {host} says it is connected, but the broker has no connection to a "
            f"core of its site ({', '.join(sorted(wanted)) or 'none resolved'})"
        ]
    earlier = [s for s in samples[:-1] if last.at - s.at >= stable_seconds]
    if any(
        s.state is not None and s.state.strip() == b"1" and to_cores & set(s.connections)
        for s in earlier
    ):
        return []
    seen = sorted({c.local for s in samples for c in s.connections if c.peer in wanted})
    return [
        f"the bridge of {host} did not stay connected for {stable_seconds:.0f} s: its "
        f"connection to a core changed (local {', '.join(seen)}; another broker logging in "
        "as the same bridge identity takes its session at the core)"
        if len(seen) > 1
        else f"the bridge of {host} has not been connected for {stable_seconds:.0f} s yet"
    ]


def core_acl_problems(host: str, fleet: Fleet, acl_text: str) -> list[str]:
    """The core's ACL confines each bridge identity to its own site's device topics (write
    telemetry and status, read commands), the device patterns applied as Mosquitto applies
    them; no other bridge identity is granted anything; nothing else applies to every user."""
    found, general = read_acl(acl_text)
    wanted_patterns = device_patterns(fleet)
    problems = [
        f"the ACL of {host} has lines for every user (they reach the bridges too): {line}"
        for line in general
    ]
    problems += [
        f"the ACL of {host} has lines for every user (they reach the bridges too): "
        f"pattern {access} {topic}"
        for access, topic in found.patterns
        if (access, topic) not in wanted_patterns
    ]
    expected = core_bridge_users(fleet, host)
    for name, rules in sorted(expected.items()):
        site = fleet.site_of_edge(name.removeprefix(BRIDGE_PREFIX))
        label = f"bridge {name}" + (f" (site {site.name})" if site is not None else "")
        if name not in found.users:
            problems.append(f"the ACL of {host} has no entry for {label}: its site cannot cross")
            continue
        granted = effective_rules(found, name)
        for access, topic in sorted(granted - set(rules)):
            problems.append(
                f"the ACL of {host} lets {label} {access} {topic}: beyond its site's devices"
            )
        for access, topic in sorted(set(rules) - granted):
            problems.append(f"the ACL of {host} does not let {label} {access} {topic}")
    for name in sorted(set(found.users) - set(expected)):
        granted = effective_rules(found, name) if name.startswith(BRIDGE_PREFIX) else set()
        if granted:
            problems.append(
                f"the ACL of {host} grants {name}, a bridge identity the inventory does not "
                f"bridge to {host}: {', '.join(f'{a} {t}' for a, t in sorted(granted))}"
            )
    return problems
