"""Judge what was read on a broker against the inventory: each function returns problems.

A problem is one sentence a security reviewer understands, naming the host and what is
wrong, e.g. "/etc/mosquitto/certs/server.key is 0644 root:mosquitto, expected 0640
root:mosquitto". An empty list means the check passed. Pure functions: no host access.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from iotfleet.check.host_facts import (
    PACKAGED_BROKER,
    FileStat,
    ListeningSocket,
    PackageOrigin,
    PackageState,
)
from iotfleet.model import Broker, Fleet, Listener
from iotfleet.model.own_identities import PROBE_DEVICES, health_identity_name
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import acl_rules, parse_acl
from iotfleet.mosquitto.auth_plugin import plugin_options
from iotfleet.mosquitto.conf import WILDCARD_ADDRESSES, ConfiguredListener, MosquittoConfig
from iotfleet.mosquitto.logins import password_users

MAX_EXPOSURE = 1.5  # systemd-analyze security score the hardened unit must stay under


# What the checks expect of each file is the broker file spec itself.
ExpectedFile = layout.BrokerFile


def expected_files(broker: Broker) -> list[ExpectedFile]:
    """Owner and mode of every file and directory iotfleet keeps on ``broker``."""
    return layout.broker_files(
        [lst.port for lst in broker.mosquitto.listeners if lst.requires_password]
    )


def file_problems(host: str, expected: ExpectedFile, stat: FileStat | None) -> list[str]:
    if stat is None:
        return [f"{expected.path} ({expected.what}) is missing on {host}"]
    problems = []
    if stat.kind != expected.kind:
        problems.append(f"{expected.path} on {host} is a {stat.kind}, expected a {expected.kind}")
    actual = (stat.mode4, stat.owner, stat.group)
    if actual != (expected.mode, expected.owner, expected.group):
        problems.append(
            f"{expected.path} on {host} is {stat.mode4} {stat.owner}:{stat.group}, expected "
            f"{expected.mode} {expected.owner}:{expected.group}"
            + (" (readable by every local user)" if int(stat.mode, 8) & 0o004 else "")
        )
    return problems


# -- package and service ---------------------------------------------------------------------


def package_problems(host: str, broker: Broker, state: PackageState) -> list[str]:
    if not state.status:
        return [f"Mosquitto is not installed on {host}"]
    want, _, current = state.status.partition(" ok ")
    if current != "installed":
        return [f"Mosquitto on {host} is not properly installed (dpkg: {state.status})"]
    problems = []
    pinned = broker.mosquitto.package_version
    if want == "hold" and pinned is None:
        problems.append(
            f"Mosquitto {state.version} on {host} is on hold: security updates will not be "
            "installed (the inventory pins no version)"
        )
    elif want != "install" and want != "hold":
        problems.append(f"Mosquitto on {host} is marked for removal (dpkg: {state.status})")
    if pinned is not None and state.version != pinned:
        problems.append(
            f"Mosquitto on {host} is {state.version}, the inventory pins {pinned} "
            "(mosquitto_package_version)"
        )
    return problems


def origin_problems(host: str, state: PackageState, origin: PackageOrigin) -> list[str]:
    """A Mosquitto that is not the Debian archive's: a binary replaced or run from elsewhere,
    or a package no configured archive has (a hand-built .deb)."""
    problems = [
        f"{path} on {host} is not the file of the Debian package mosquitto {state.version} "
        "(dpkg --verify: its checksum differs): a hand-installed binary"
        for path in origin.modified
    ]
    if origin.running and origin.running != PACKAGED_BROKER:
        problems.append(
            f"the broker on {host} runs {origin.running}, not the packaged {PACKAGED_BROKER}"
        )
    if state.version and not origin.sources:
        problems.append(
            f"Mosquitto {state.version} on {host} is in no configured Debian archive "
            "(apt-cache policy: only the local dpkg status): installed by hand"
        )
    return problems


def service_problems(host: str, enabled: bool, active: bool) -> list[str]:
    problems = []
    if not active:
        problems.append(f"mosquitto.service is not running on {host}")
    if not enabled:
        problems.append(f"mosquitto.service is not enabled on {host}: it will not start at boot")
    return problems


def user_problems(
    host: str, unit_user: str, main_user: str | None, processes: Iterable[tuple[str, int]]
) -> list[str]:
    problems = []
    if unit_user != layout.GROUP:
        problems.append(
            f"mosquitto.service on {host} starts as {unit_user or 'root'} (User="
            f"{unit_user}), expected User=mosquitto: the broker starts with root privileges"
        )
    if main_user is None:
        problems.append(f"no running broker process on {host}")
    elif main_user != "mosquitto":
        problems.append(f"the broker process on {host} runs as {main_user}, expected mosquitto")
    for user, pid in processes:
        if user != "mosquitto":
            problems.append(f"a mosquitto process (pid {pid}) on {host} runs as {user}")
    return problems


def sandbox_problems(
    host: str, broker: Broker, props: dict[str, str], exposure: float | None
) -> list[str]:
    capabilities = ""  # none: listener ports below 1024 are refused by the inventory
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": capabilities,
        "AmbientCapabilities": capabilities,
    }
    problems = []
    if layout.DROPIN not in props.get("DropInPaths", "").split():
        problems.append(
            f"the sandbox drop-in {layout.DROPIN} is not loaded for mosquitto.service on {host}"
        )
    for key, want in expected.items():
        got = props.get(key, "")
        if got != want:
            problems.append(
                f"mosquitto.service on {host} has {key}={got or '(empty)'}, "
                f"expected {key}={want or '(empty)'}"
            )
    if exposure is None:
        problems.append(f"systemd-analyze security gave no exposure score for mosquitto on {host}")
    elif exposure > MAX_EXPOSURE:
        problems.append(
            f"systemd-analyze security scores mosquitto on {host} {exposure} (expected "
            f"<= {MAX_EXPOSURE}): the sandbox is not in effect"
        )
    return problems


# -- listeners and effective configuration ---------------------------------------------------


def _is_wildcard(address: str) -> bool:
    return address in WILDCARD_ADDRESSES


def _same_address(actual: str, configured: str) -> bool:
    try:
        return ipaddress.ip_address(actual) == ipaddress.ip_address(configured)
    except ValueError:
        return actual == configured


def socket_problems(host: str, broker: Broker, sockets: Iterable[ListeningSocket]) -> list[str]:
    """The broker listens exactly where the inventory says: nothing more, nothing less."""
    wanted = {listener.port: listener for listener in broker.mosquitto.listeners}
    mosquitto_sockets = [s for s in sockets if any(name == "mosquitto" for name, _ in s.processes)]
    problems = []
    for sock in mosquitto_sockets:
        listener = wanted.get(sock.port)
        if listener is None:
            problems.append(
                f"Mosquitto listens on {sock.where} on {host}, which the inventory does not list"
            )
        elif listener.bind_address is None:
            if not _is_wildcard(sock.address):
                problems.append(
                    f"Mosquitto listens on {sock.where} on {host}; the inventory expects every "
                    f"address for port {sock.port}"
                )
        elif not _same_address(sock.address, listener.bind_address):
            problems.append(
                f"Mosquitto listens on {sock.where} on {host}; the inventory binds port "
                f"{sock.port} to {listener.bind_address}"
            )
    listening_ports = {s.port for s in mosquitto_sockets}
    for port in sorted(set(wanted) - listening_ports):
        problems.append(f"Mosquitto does not listen on port {port} on {host} (in the inventory)")
    return problems


def plain_listener_problems(
    host: str, config: MosquittoConfig, sockets: Iterable[ListeningSocket]
) -> list[str]:
    """No MQTT without TLS on an address other hosts can reach."""
    problems = []
    for listener in config.listeners:
        if not listener.tls and not listener.loopback:
            problems.append(
                f"plain MQTT (no TLS) on {listener.where} on {host}: credentials and messages "
                "travel in clear text"
            )
    tls_ports = {lst.port for lst in config.listeners if lst.tls}
    reported = {lst.port for lst in config.listeners if not lst.tls and not lst.loopback}
    for sock in sockets:
        if not any(name == "mosquitto" for name, _ in sock.processes) or sock.loopback:
            continue
        if sock.port not in tls_ports and sock.port not in reported:
            reported.add(sock.port)
            problems.append(
                f"plain MQTT (no TLS) on {sock.where} on {host}: the running broker's "
                "configuration has no TLS listener on that port"
            )
    return problems


def configured_listener_problems(host: str, broker: Broker, config: MosquittoConfig) -> list[str]:
    """Listener blocks in the configuration match the inventory's listeners."""
    problems = []
    for configured in config.listeners:
        if not any(lst.port == configured.port for lst in broker.mosquitto.listeners):
            problems.append(
                f"the configuration on {host} has a listener on {configured.where} that the "
                "inventory does not list"
            )
    for listener in broker.mosquitto.listeners:
        configured_listener = config.listener(listener.port)
        if configured_listener is None:
            problems.append(f"the configuration on {host} has no listener on port {listener.port}")
            continue
        if (configured_listener.bind_address or None) != listener.bind_address:
            problems.append(
                f"listener {listener.port} on {host} binds {configured_listener.where}, "
                f"the inventory says {listener.bind_address or 'every address'}"
            )
        protocol = config.effective(configured_listener, "protocol")
        if protocol != listener.protocol:
            problems.append(
                f"listener {listener.port} on {host} speaks {protocol}, the inventory says "
                f"{listener.protocol}"
            )
    return problems


def _configured(
    host: str, listener: Listener, config: MosquittoConfig
) -> tuple[ConfiguredListener | None, list[str]]:
    configured = config.listener(listener.port)
    if configured is None:
        return None, [f"the configuration on {host} has no listener on port {listener.port}"]
    return configured, []


def anonymous_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    if (config.effective(configured, "allow_anonymous") or "").lower() != "false":
        problems.append(
            f"anonymous clients are allowed on {host}:{listener.port} (allow_anonymous true)"
        )
    return problems


def authentication_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    """Client certificates and/or passwords are required as the inventory says."""
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    where = f"{host}:{listener.port}"
    if listener.requires_certificate:
        if (config.effective(configured, "require_certificate") or "").lower() != "true":
            problems.append(
                f"client certificates are not required on {where} (require_certificate is not "
                "true): clients without a certificate can connect"
            )
        if not (configured.options.get("cafile") or configured.options.get("capath")):
            problems.append(f"no CA to verify client certificates on {where} (cafile)")
        if listener.auth == "certificate" and (
            (configured.options.get("use_identity_as_username") or "").lower() != "true"
            and (configured.options.get("use_subject_as_username") or "").lower() != "true"
        ):
            problems.append(
                f"the certificate is not the identity on {where} (use_identity_as_username is "
                "not true): a client may claim any username"
            )
    if listener.requires_password:
        password_file = config.effective(configured, "password_file")
        wanted = layout.password_file(listener.port)
        if password_file != wanted:
            problems.append(
                f"passwords are not checked on {where} (password_file is "
                f"{password_file or 'not set'}, expected {wanted})"
            )
    if listener.tls and not configured.tls:
        problems.append(f"no TLS on {where} (no certfile), the inventory asks for TLS")
    return problems


def tls_config_problems(
    host: str, broker: Broker, listener: Listener, config: MosquittoConfig
) -> list[str]:
    """TLS versions and cipher lists are the inventory's (strong ones)."""
    configured, problems = _configured(host, listener, config)
    if configured is None or not listener.tls:
        return problems
    where = f"{host}:{listener.port}"
    settings = broker.mosquitto
    version = configured.options.get("tls_version")
    if version != settings.tls_version:
        problems.append(
            f"TLS versions on {where}: tls_version is {version or 'not set (all versions)'}, "
            f"expected {settings.tls_version}"
        )
    for option, wanted in (
        ("ciphers", settings.ciphers),
        ("ciphers_tls1.3", settings.ciphers_tls13),
    ):
        got = configured.options.get(option)
        if got != wanted:
            extra = [c for c in (got or "").split(":") if c and c not in wanted.split(":")]
            detail = f"adds {', '.join(extra)}" if extra else f"is {got or 'not set (defaults)'}"
            problems.append(f"{option} on {where} {detail}; expected the inventory's list")
    return problems


def crl_config_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    configured, problems = _configured(host, listener, config)
    if configured is None or not listener.requires_certificate:
        return problems
    crl = configured.options.get("crlfile")
    if crl != layout.CRL:
        problems.append(
            f"no CRL on {host}:{listener.port} (crlfile is {crl or 'not set'}, expected "
            f"{layout.CRL}): revoked certificates are accepted"
        )
    return problems


def acl_config_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    acl = config.effective(configured, "acl_file")
    if acl != layout.ACL_FILE:
        problems.append(
            f"no ACL on {host}:{listener.port} (acl_file is {acl or 'not set'}, expected "
            f"{layout.ACL_FILE}): every client may read and write every topic"
        )
    return problems


def plugin_problems(
    host: str, fleet: Fleet, broker: Broker, listener: Listener, config: MosquittoConfig
) -> list[str]:
    """iotfleet's plugin is loaded on the listener with the options its auth needs."""
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    where = f"{host}:{listener.port}"
    plugin = config.effective(configured, "plugin")
    if plugin != layout.AUTH_PLUGIN:
        return [
            f"iotfleet's plugin is not loaded on {where} (plugin is {plugin or 'not set'}, "
            f"expected {layout.AUTH_PLUGIN}): "
            + (
                "any fleet certificate logs in with another identity's password; "
                if listener.auth == "certificate+password"
                else ""
            )
            + "devices may keep unlimited retained messages, the health identity may log in "
            "from the network"
        ]
    expected = dict(
        plugin_options(
            fleet,
            broker,
            listener,
            layout.password_file(listener.port) if listener.requires_password else None,
        )
    )
    for key in ("password_file", "require_cn", "local_only"):
        want = expected.get(key)
        got = configured.options.get(f"plugin_opt_{key}")
        if got != want:
            problems.append(
                f"iotfleet's plugin on {where}: plugin_opt_{key} is {got or 'not set'}, "
                f"expected {want or 'not set'}"
            )
    return problems


def limit_problems(host: str, broker: Broker, config: MosquittoConfig) -> list[str]:
    """Packet size, in-flight and queued messages are bounded as the inventory says."""
    settings = broker.mosquitto
    wanted = {
        "max_packet_size": settings.max_packet_size,
        "memory_limit": settings.heap_limit,
        "max_inflight_messages": settings.max_inflight_messages,
        "max_queued_messages": settings.max_queued_messages,
        "max_queued_bytes": settings.max_queued_bytes,
    }
    why = {
        "max_packet_size": ": a CONNECT announcing 256 MiB is buffered before authentication",
        "memory_limit": ": the broker allocates until the kernel kills it",
    }
    problems = []
    for option, want in wanted.items():
        got = config.global_options.get(option)
        if got != str(want):
            problems.append(
                f"{option} on {host} is {got or 'not set (unlimited)'}, expected {want}"
                + why.get(option, "")
            )
    return problems


def memory_problems(host: str, broker: Broker, props: dict[str, str]) -> list[str]:
    """The unit has the memory ceiling the inventory sizes (MemoryHigh/MemoryMax)."""
    settings = broker.mosquitto
    problems = []
    for key, mib in (
        ("MemoryMax", settings.memory_ceiling_mb),
        ("MemoryHigh", settings.memory_high_mb),
    ):
        want = mib * 1024 * 1024
        got = props.get(key, "")
        if got != str(want):
            shown = "infinity (no limit)" if got in ("", "infinity") else f"{got} bytes"
            problems.append(
                f"mosquitto.service on {host} has {key}={shown}, expected {want} bytes "
                "(mosquitto_memory_max_mb): the broker may take all of the host's memory"
            )
    return problems


def password_file_problems(
    host: str, fleet: Fleet, broker_name: str, listener: Listener, usernames: list[str] | None
) -> list[str]:
    """The listener's password file holds exactly the identities allowed a password there."""
    path = layout.password_file(listener.port)
    if usernames is None:
        return [f"{path} (password file of listener {listener.port}) is missing on {host}"]
    expected = password_users(fleet, broker_name, listener)
    problems = []
    for user in sorted(set(usernames) - expected):
        problems.append(
            f"{path} on {host} lets {_owner(fleet, user, broker_name)} log in with a password "
            f"on listener {listener.port} ({listener.auth}), which the inventory does not"
        )
    for user in sorted(expected - set(usernames)):
        problems.append(
            f"{path} on {host} has no password for {_owner(fleet, user, broker_name)}, who "
            "the inventory lets log in there"
        )
    duplicates = sorted({u for u in usernames if usernames.count(u) > 1})
    if duplicates:
        problems.append(f"{path} on {host} lists {', '.join(duplicates)} more than once")
    return problems


# -- ACL file --------------------------------------------------------------------------------


def _owner(fleet: Fleet, username: str, broker_name: str) -> str:
    if username in PROBE_DEVICES:
        return f"probe device {username}"
    if any(d.id == username for d in fleet.devices):
        return f"device {username}"
    if any(c.name == username for c in fleet.clients):
        return f"client {username}"
    if username == health_identity_name(broker_name):
        return f"health identity {username}"
    return f"user {username}"


_VERB = {"read": "read", "write": "write", "readwrite": "read and write", "deny": "be denied"}


def acl_problems(host: str, fleet: Fleet, broker_name: str, text: str) -> list[str]:
    """The ACL on the host grants exactly what the inventory grants."""
    actual, general = parse_acl(text)
    expected = {user: set(rules) for user, rules in acl_rules(fleet, broker_name).items()}
    problems = [
        f"the ACL on {host} has a rule for every client: '{line}' (not from the inventory)"
        for line in general
    ]
    for user in sorted(set(actual) | set(expected)):
        who = _owner(fleet, user, broker_name)
        if user not in expected:
            grants = ", ".join(f"{a} {t}" for a, t in sorted(actual[user])) or "nothing"
            problems.append(
                f"the ACL on {host} has rules for {who}, who is not an active user of the "
                f"inventory ({grants})"
            )
            continue
        for access, topic in sorted(actual.get(user, set()) - expected[user]):
            problems.append(
                f"the ACL on {host} lets {who} {_VERB[access]} '{topic}' "
                "(not granted by the inventory)"
            )
        for access, topic in sorted(expected[user] - actual.get(user, set())):
            problems.append(
                f"the ACL on {host} no longer lets {who} {_VERB[access]} '{topic}' "
                "(granted by the inventory)"
            )
    return problems
