"""Render a broker's Mosquitto files from the validated fleet (pure, no host access)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra.api.util import get_template

from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.credentials import health_password, password_salt_key
from iotfleet.model import Broker, Fleet, Listener
from iotfleet.model.own_identities import health_identity_name, health_topic
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import acl_file, broker_identities, render_acl, render_identities
from iotfleet.mosquitto.auth_plugin import plugin_options
from iotfleet.mosquitto.bridge import edge_bridge, render_bridge
from iotfleet.mosquitto.logins import password_users
from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.mosquitto.passwd import derive_salt, render_password_file
from iotfleet.roles.firewall.unit import FIREWALL_UNIT
from iotfleet.roles.mosquitto.plugin_build import auth_plugin

TEMPLATES = Path(__file__).parent / "templates"
_JINJA = {"trim_blocks": True, "lstrip_blocks": True}
# Headroom over max_connections for the broker's own files, sockets and listeners.
NOFILE_HEADROOM = 1024


def render_template(name: str, **context: Any) -> str:
    return str(get_template(str(TEMPLATES / name), _JINJA).render(**context))


def apply_script() -> str:
    """The apply script, every path and name in it taken from the broker file spec."""
    values = {name: getattr(layout, name) for name in dir(layout) if name.isupper()}
    values["HEALTH_OPTIONS_DIR"] = posixpath.dirname(layout.HEALTH_OPTIONS)
    return render_template("mosquitto-apply.sh.j2", layout=values)


@dataclass(frozen=True)
class BrokerConfig:
    """Everything mosquitto.conf needs; rendered for the real broker or for a test run."""

    broker: Broker
    fleet: Fleet

    def file_keys(self) -> dict[str, str]:
        """Template name -> live path of every file mosquitto.conf refers to."""
        keys = {
            "ca_chain": layout.CA_CHAIN,
            "server_cert": layout.SERVER_CERT,
            "server_key": layout.SERVER_KEY,
            "crl": layout.CRL,
            "acl": layout.ACL_FILE,
            "identities": layout.IDENTITIES_FILE,
            "plugin": layout.AUTH_PLUGIN,
        }
        for listener in self.broker.mosquitto.listeners:
            if listener.requires_password:
                keys[f"passwd-{listener.port}"] = layout.password_file(listener.port)
        return keys

    def text(self, moved: Mapping[str, str] | None = None, *, candidate: bool = False) -> str:
        """The configuration; ``moved`` maps live paths to where those files are instead.

        ``candidate`` renders the spare-port test variant: listeners on loopback with
        ``@PORT<n>@`` placeholders and no persistence, and no bridge (it would log in at the
        cores with the live bridge's client id and take its session over).

        An edge broker of a multi-site fleet gets its bridge to the site's cores at the end.
        """
        moved = moved or {}
        files = {key: moved.get(path, path) for key, path in self.file_keys().items()}
        settings = self.broker.mosquitto
        blocks = []
        for index, listener in enumerate(settings.listeners):
            view: Listener | _ListenerView = listener
            if candidate:
                view = _ListenerView(listener, port=f"@PORT{index}@", bind_address="127.0.0.1")
            password_file = files.get(f"passwd-{listener.port}")
            options = plugin_options(
                self.fleet, self.broker, listener, password_file, files["identities"]
            )
            blocks.append((view, password_file, options))
        text = render_template(
            "mosquitto.conf.j2",
            broker_name=self.broker.name,
            fleet_name=self.fleet.name,
            persistence=settings.persistence and not candidate,
            persistence_location=layout.PERSISTENCE_DIR,
            message_size_limit=settings.message_size_limit,
            max_packet_size=settings.max_packet_size,
            memory_limit=settings.heap_limit,
            max_inflight_messages=settings.max_inflight_messages,
            max_queued_messages=settings.max_queued_messages,
            max_queued_bytes=settings.max_queued_bytes,
            log_types=settings.log_types,
            blocks=blocks,
            max_connections=settings.max_connections,
            username_as_clientid=settings.username_as_clientid,
            tls_version=settings.tls_version,
            ciphers=settings.ciphers,
            ciphers_tls13=settings.ciphers_tls13,
            files=files,
        )
        bridge = None if candidate else edge_bridge(self.fleet, self.broker.name, moved)
        return text if bridge is None else text + render_bridge(bridge)

    def listeners_table(self) -> str:
        """One line per listener for the apply script: port, bind, protocol, tls."""
        return "".join(
            f"{lst.port} {lst.bind_address or '-'} {lst.protocol} {'yes' if lst.tls else 'no'}\n"
            for lst in self.broker.mosquitto.listeners
        )


class _ListenerView:
    """A listener seen through the candidate's substitutions (port placeholder, loopback)."""

    def __init__(self, listener: Listener, *, port: str, bind_address: str) -> None:
        self._listener = listener
        self.port = port
        self.bind_address = bind_address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


def limit_nofile(broker: Broker) -> int:
    return broker.mosquitto.max_connections * len(broker.mosquitto.listeners) + NOFILE_HEADROOM


def memory_limits(broker: Broker) -> tuple[str, str]:
    """(MemoryHigh, MemoryMax) of the unit: throttled at 90%, killed (and restarted) at 100%."""
    settings = broker.mosquitto
    return f"{settings.memory_high_mb}M", f"{settings.memory_ceiling_mb}M"


def service_files(ctx: FleetContext, broker: Broker) -> tuple[BrokerConfig, list[ManagedFile]]:
    """mosquitto.conf, ACL, one password file per password listener, the plugin and the
    sandbox drop-in for ``broker``. Pure: the same inventory renders the same bytes."""
    config = BrokerConfig(broker, ctx.fleet)
    acl = render_acl(acl_file(ctx.fleet, broker.name))
    identities = render_identities(broker_identities(ctx.fleet, broker.name))
    memory_high, memory_max = memory_limits(broker)
    files = [
        layout.CONFIG_FILE.with_content(config.text().encode()),
        layout.ACL.with_content(acl.encode()),
        layout.IDENTITIES.with_content(identities.encode()),
        layout.AUTH_PLUGIN_FILE.with_content(auth_plugin()),
        layout.DROPIN_FILE.with_content(
            render_template(
                "iotfleet-hardening.conf.j2",
                limit_nofile=limit_nofile(broker),
                run_user=layout.RUN_USER,
                run_group=layout.GROUP,
                firewall_unit=FIREWALL_UNIT if broker.firewall.enabled else None,
                memory_high=memory_high,
                memory_max=memory_max,
            ).encode()
        ),
    ]
    clear = {u: s.get_secret_value() for u, s in ctx.passwords.items()}
    clear.update(health_password_entry(ctx, broker))
    salt_key = password_salt_key(ctx.secrets)
    iterations = broker.mosquitto.password_iterations
    for listener in broker.mosquitto.listeners:
        users = password_users(ctx.fleet, broker.name, listener)
        if not users:
            continue

        def salt_of(user: str, password: str) -> bytes:
            return derive_salt(salt_key, user=user, password=password)

        passwd = render_password_file(
            {u: clear[u] for u in users}, salt_of, iterations, ctx.password_hashes
        )
        files.append(layout.password_file_spec(listener.port).with_content(passwd.encode()))
    return config, files


def health_password_entry(ctx: FleetContext, broker: Broker) -> dict[str, str]:
    """``{health username: password}`` of the broker's own health-check identity."""
    password = health_password(ctx.secrets, broker.name)
    return {health_identity_name(broker.name): password.get_secret_value()}


def health_options(ctx: FleetContext, broker: Broker) -> bytes:
    """mosquitto_pub's default options for the health check: identity and password."""
    ((username, password),) = health_password_entry(ctx, broker).items()
    return f"-i {username}\n-u {username}\n-P {password}\n".encode()


def health_topic_of(broker: Broker) -> str:
    return health_topic(broker.name)
