"""Firewall role: nftables input filter allowing SSH and the broker's listeners only."""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Generator
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.api.util import get_template
from pyinfra.operations import systemd

from iotfleet.model import Broker
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.roles.firewall.unit import FIREWALL_UNIT
from iotfleet.roles.fleet_context import fleet_model
from iotfleet.roles.host_ops import directory, put_files, systemd_unit, units_query
from iotfleet.roles.host_state import HostQuery, expect, host_state
from iotfleet.roles.packages import broker_packages, install_debs, packages_query
from iotfleet.roles.refusal import RolloutRefusedError
from iotfleet.roles.this_host import this_broker

TEMPLATES = Path(__file__).parent / "templates"
RULES_PATH = "/etc/iotfleet/firewall.nft"
# The last ruleset that loaded: what the boot unit falls back to if RULES_PATH does not load.
LAST_GOOD_PATH = "/etc/iotfleet/firewall.last-good.nft"
# SHA-256 of `nft -t list table inet iotfleet` right after iotfleet loaded it.
LOADED_DIGEST_PATH = "/etc/iotfleet/firewall.loaded.sha256"
UNIT_PATH = "/etc/systemd/system/iotfleet-firewall.service"
CONFIG_DIR = layout.IOTFLEET_ETC_DIR_FILE.path
_JINJA = {"trim_blocks": True, "lstrip_blocks": True}
# Sources remembered by the password-listener limit (per family). When the set is full, new
# sources are not limited until old ones time out: 65536 addresses is far beyond a fleet's
# clients, and an attacker that many addresses strong is a DDoS, not a guesser.
LIMIT_SET_SIZE = 65536
LIMIT_MIN_TIMEOUT = 120


class FirewallWouldCutSshError(Exception):
    """Applying the ruleset would drop the SSH connection the rollout runs on."""


def open_tcp_ports(broker: Broker) -> list[int]:
    """Ports reachable from the network besides SSH: non-loopback listeners and extra ports."""
    return sorted(broker.network_ports())


def _by_family(networks: list[str]) -> tuple[list[str], list[str]]:
    parsed = [ipaddress.ip_network(n) for n in networks]
    return [str(n) for n in parsed if n.version == 4], [str(n) for n in parsed if n.version == 6]


def _exempt(family: str, networks: list[str]) -> str:
    return f"{family} saddr != {{ {', '.join(networks)} }} " if networks else ""


def password_limit(broker: Broker) -> dict[str, object] | None:
    """Template values of the per-source limit on password listeners; None when off."""
    settings = broker.firewall
    ports = sorted(broker.password_ports())
    if not ports or settings.password_rate == 0:
        return None
    exempt_v4, exempt_v6 = _by_family(settings.password_limit_exempt)
    refill = math.ceil(settings.password_burst * 60 / settings.password_rate)
    return {
        "ports": ports,
        "rate": settings.password_rate,
        "burst": settings.password_burst,
        # Forget a source only once its bucket would be full again: forgetting is then free.
        "timeout": max(LIMIT_MIN_TIMEOUT, refill),
        "size": LIMIT_SET_SIZE,
        "exempt_v4": _exempt("ip", exempt_v4),
        "exempt_v6": _exempt("ip6", exempt_v6),
    }


def render_ruleset(broker: Broker) -> str:
    """The nftables file; its own digest sits in the table comment so drift is visible."""
    ssh_v4, ssh_v6 = _by_family(broker.firewall.ssh_sources)
    context = {
        "host_name": broker.name,
        "ssh_port": broker.firewall_ssh_port,
        "ssh_sources_v4": ssh_v4,
        "ssh_sources_v6": ssh_v6,
        "tcp_ports": open_tcp_ports(broker),
        "limit": password_limit(broker),
    }
    template = get_template(str(TEMPLATES / "firewall.nft.j2"), dict(_JINJA))
    digest = hashlib.sha256(template.render(digest="", **context).encode()).hexdigest()[:16]
    return str(template.render(digest=digest, **context))


def ruleset_digest(ruleset: str) -> str:
    marker = 'comment "iotfleet ruleset '
    start = ruleset.index(marker) + len(marker)
    return ruleset[start : ruleset.index('"', start)]


def check_ssh_survives(broker: Broker, connection: tuple[str, int] | None) -> None:
    """Refuse a ruleset that would not let the rollout's own SSH session back in."""
    if connection is None:
        return
    client, server_port = connection
    if server_port != broker.firewall_ssh_port:
        raise FirewallWouldCutSshError(
            f"host {broker.name}: this rollout's SSH runs on port {server_port}, but "
            f"firewall_ssh_port is {broker.firewall_ssh_port}: new SSH sessions would be dropped"
        )
    sources = [ipaddress.ip_network(s) for s in broker.firewall.ssh_sources]
    if sources and not any(ipaddress.ip_address(client) in net for net in sources):
        raise FirewallWouldCutSshError(
            f"host {broker.name}: firewall_ssh_sources does not include {client}, the address "
            "this rollout connects from: new SSH sessions would be dropped"
        )


def render_unit() -> str:
    """The unit that loads the ruleset at boot (falling back to the last one that loaded)."""
    template = get_template(str(TEMPLATES / "iotfleet-firewall.service.j2"), dict(_JINJA))
    return str(template.render(rules_path=RULES_PATH, last_good_path=LAST_GOOD_PATH))


_RULESET_QUERY = HostQuery(paths=frozenset({LAST_GOOD_PATH}), ruleset_record=LOADED_DIGEST_PATH)


def host_query(broker: Broker) -> HostQuery:
    """Everything the role reads of ``broker``'s host (one read per run: ``expect``)."""
    if not broker.firewall.enabled:
        return units_query(FIREWALL_UNIT)
    names, _ = broker_packages(broker)
    return (
        HostQuery(paths=frozenset({CONFIG_DIR, RULES_PATH, UNIT_PATH}), ssh_connection=True)
        | _RULESET_QUERY
        | units_query(FIREWALL_UNIT)
        | packages_query(names)
    )


@operation()
def load_ruleset(ruleset: str) -> Generator[Any, None, None]:
    """Load the ruleset atomically when the loaded one differs from it or was changed since
    iotfleet loaded it (checked with ``nft -c`` first)."""
    live = host_state(_RULESET_QUERY)
    comment, loaded, recorded = live.ruleset
    if comment == ruleset_digest(ruleset) and loaded is not None and loaded == recorded:
        if live.file(LAST_GOOD_PATH):
            host.noop("the iotfleet nftables table is loaded and current")
        else:  # loaded by a release that kept no fallback copy: the loaded file is the good one
            yield StringCommand("install", "-m", "600", RULES_PATH, LAST_GOOD_PATH)
        return
    yield StringCommand(
        "nft", "-c", "-f", RULES_PATH, "&&", "nft", "-f", RULES_PATH,
        "&&", "install", "-m", "600", RULES_PATH, LAST_GOOD_PATH,
        "&&", "nft", "-t", "list", "table", "inet", "iotfleet",
        "|", "sha256sum", "|", "cut", "-d' '", "-f1", ">", LOADED_DIGEST_PATH,
    )  # fmt: skip


# pyinfra state -> hosts whose firewall this run already rolled out: the role runs once per
# host, whether the user's deploy file calls it or the Mosquitto role pulls it in as its
# dependency. Keyed by the run's state: a second run in one process starts afresh.
_rolled_out: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()


def firewall_rolled_out(host_name: str) -> bool:
    """Whether this run already added the firewall role's operations for ``host_name``."""
    return host_name in _rolled_out.get(host.state, set())


@deploy("nftables firewall")
def deploy_firewall(broker: Broker | None = None) -> None:
    """
    Allow SSH and the broker's listeners; drop every other inbound connection. The ruleset is
    loaded atomically (checked with ``nft -c`` first) and never cuts this rollout's SSH
    session; password listeners get a per-source connection limit; a table changed by hand is
    put back at the next rollout.

    + broker: the broker to protect; default: the current host in this run's validated fleet

    Keys: the host's ``firewall_*`` (``iotfleet keys firewall_``); ``firewall_enabled = False``
    stops and disables the firewall instead. Runs once per host and run: ``deploy_mosquitto``
    calls it first if the deploy file did not (Mosquitto's unit requires the firewall's).

    **Example:**

    .. code:: python

        from iotfleet.roles.firewall import deploy_firewall

        deploy_firewall()
    """
    broker = broker or this_broker(fleet_model())
    if firewall_rolled_out(host.name):
        return
    _rolled_out.setdefault(host.state, set()).add(host.name)
    expect(host_query(broker))
    if not broker.firewall.enabled:
        systemd_unit(
            name="Stop the iotfleet firewall (firewall_enabled is false)",
            service=FIREWALL_UNIT,
            running=False,
            enabled=False,
        )
        return
    try:
        live = host_state(HostQuery(ssh_connection=True))
        check_ssh_survives(broker, live.ssh_connection)
    except FirewallWouldCutSshError as exc:
        raise RolloutRefusedError(f"iotfleet: {exc}") from None
    ruleset = render_ruleset(broker)
    names, versions = broker_packages(broker)
    install_debs(
        name=f"Install {', '.join(names)} in one apt transaction (no service started)",
        packages=names,
        versions=versions,
    )
    directory(name=f"Create {CONFIG_DIR}", path=CONFIG_DIR, owner="root", group="root", mode="755")
    put_files(
        name="Write the nftables ruleset",
        files=[ManagedFile(RULES_PATH, ruleset.encode(), "root", "root", "600", holds="config")],
    )
    unit_file = put_files(
        name="Install the unit that loads the ruleset at boot",
        files=[
            ManagedFile(UNIT_PATH, render_unit().encode(), "root", "root", "644", holds="config")
        ],
    )
    load_ruleset(name="Load the nftables ruleset atomically", ruleset=ruleset)
    systemd.daemon_reload(name="Reload systemd units", _if=unit_file.did_change)
    systemd_unit(name="Enable the firewall at boot", service=FIREWALL_UNIT, enabled=True)
