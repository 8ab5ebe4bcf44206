"""Render a broker's Mosquitto files from the validated fleet (pure, no host access)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra.api.util import get_template

from iotfleet.context import FleetContext
from iotfleet.credentials import health_password
from iotfleet.health import health_identity_name, health_topic
from iotfleet.managed_file import Action, ManagedFile
from iotfleet.model import Broker, Listener
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import acl_rules, render_acl
from iotfleet.mosquitto.passwd import render_password_file
from iotfleet.probes import PROBE_PASSWORD_USERS

TEMPLATES = Path(__file__).parent / "templates"
_JINJA = {"trim_blocks": True, "lstrip_blocks": True}
# Headroom over max_connections for the broker's own files, sockets and listeners.
NOFILE_HEADROOM = 1024


def render_template(name: str, **context: Any) -> str:
    return str(get_template(str(TEMPLATES / name), _JINJA).render(**context))


@dataclass(frozen=True)
class BrokerConfig:
    """Everything mosquitto.conf needs; rendered for the real broker or for a test run."""

    broker: Broker
    fleet_name: str
    with_passwords: bool

    @staticmethod
    def file_keys() -> dict[str, str]:
        """Template name -> live path of every file mosquitto.conf refers to."""
        return {
            "ca_chain": layout.CA_CHAIN,
            "server_cert": layout.SERVER_CERT,
            "server_key": layout.SERVER_KEY,
            "crl": layout.CRL,
            "passwd": layout.PASSWORD_FILE,
            "acl": layout.ACL_FILE,
        }

    def text(self, moved: Mapping[str, str] | None = None, *, candidate: bool = False) -> str:
        """The configuration; ``moved`` maps live paths to where those files are instead.

        ``candidate`` renders the spare-port test variant: listeners on loopback with
        ``@PORT<n>@`` placeholders and no persistence.
        """
        moved = moved or {}
        files = {key: moved.get(path, path) for key, path in self.file_keys().items()}
        settings = self.broker.mosquitto
        listeners: Sequence[Listener | _ListenerView] = settings.listeners
        if candidate:
            listeners = [
                _ListenerView(listener, port=f"@PORT{index}@", bind_address="127.0.0.1")
                for index, listener in enumerate(settings.listeners)
            ]
        return render_template(
            "mosquitto.conf.j2",
            broker_name=self.broker.name,
            fleet_name=self.fleet_name,
            persistence=settings.persistence and not candidate,
            persistence_location=layout.PERSISTENCE_DIR,
            message_size_limit=settings.message_size_limit,
            log_types=settings.log_types,
            listeners=listeners,
            max_connections=settings.max_connections,
            username_as_clientid=settings.username_as_clientid,
            tls_version=settings.tls_version,
            ciphers=settings.ciphers,
            ciphers_tls13=settings.ciphers_tls13,
            files=files,
        )

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


def uses_passwords(broker: Broker) -> bool:
    return any(listener.requires_password for listener in broker.mosquitto.listeners)


def limit_nofile(broker: Broker) -> int:
    return broker.mosquitto.max_connections * len(broker.mosquitto.listeners) + NOFILE_HEADROOM


def service_files(
    ctx: FleetContext, broker: Broker, existing_hashes: dict[str, str]
) -> tuple[BrokerConfig, list[ManagedFile]]:
    """mosquitto.conf, ACL, password file and the sandbox drop-in for ``broker``."""
    config = BrokerConfig(broker, ctx.fleet.name, uses_passwords(broker))
    acl = render_acl(acl_rules(ctx.fleet, broker.name))
    files = [
        _config_file(layout.CONFIG, config.text(), "restart"),
        _config_file(layout.ACL_FILE, acl, "reload"),
        ManagedFile(
            layout.DROPIN,
            render_template(
                "iotfleet-hardening.conf.j2",
                limit_nofile=limit_nofile(broker),
                bind_low_ports=any(lst.port < 1024 for lst in broker.mosquitto.listeners),
            ).encode(),
            "root",
            "root",
            "644",
            "daemon-reload",
        ),
    ]
    if config.with_passwords:
        allowed = ctx.fleet.users_of(broker.name) | set(PROBE_PASSWORD_USERS)
        clear = {
            user: secret.get_secret_value()
            for user, secret in ctx.passwords.items()
            if user in allowed
        }
        clear.update(health_password_entry(ctx, broker))
        passwd = render_password_file(clear, existing_hashes)
        files.append(_config_file(layout.PASSWORD_FILE, passwd, "reload"))
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


def _config_file(path: str, text: str, action: Action) -> ManagedFile:
    return ManagedFile(path, text.encode(), layout.OWNER, layout.GROUP, "640", action)
