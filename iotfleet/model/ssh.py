"""How pyinfra reaches a host (its ``ssh_*`` data), and the OpenSSH options that reach it the
same way: the one translation the compliance checks and the flash stations' relay both use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# pyinfra's own default for ssh_strict_host_key_checking.
PYINFRA_HOST_KEY_CHECKING = "accept-new"
# Settings that need a person at the keyboard: unattended runs (checks, relays) refuse them.
INTERACTIVE_KEYS = ("ssh_password", "ssh_key_password")


class SshEndpointError(ValueError):
    """The host cannot be reached over SSH unattended, as its data asks."""


@dataclass(frozen=True)
class SshEndpoint:
    """How pyinfra reaches a host, from its ``ssh_*`` data."""

    hostname: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: str = PYINFRA_HOST_KEY_CHECKING
    config_file: str | None = None

    @property
    def target(self) -> str:
        """``user@host`` (or ``host``) for the ssh command line."""
        return f"{self.user}@{self.hostname}" if self.user else self.hostname

    def openssh_options(self) -> list[tuple[str, str]]:
        """``(Option, value)`` pairs, first wins as in OpenSSH; paths with ``~`` expanded.

        ``Include`` of ``ssh_config_file`` comes last so the inventory's settings win and the
        rest comes from that file.
        """
        options = [
            ("HostName", self.hostname),
            ("Port", str(self.port)),
            ("BatchMode", "yes"),
            ("StrictHostKeyChecking", self.strict_host_key_checking),
        ]
        if self.user:
            options.append(("User", self.user))
        if self.key:
            options += [("IdentityFile", _expand(self.key)), ("IdentitiesOnly", "yes")]
        if self.known_hosts:
            options.append(("UserKnownHostsFile", _expand(self.known_hosts)))
        if self.config_file:
            options.append(("Include", _expand(self.config_file)))
        return options


def _expand(path: str) -> str:
    return str(Path(path).expanduser())


def ssh_endpoint(host_name: str, data: Mapping[str, Any]) -> SshEndpoint:
    """The SSH settings pyinfra would use for ``host_name`` (``ssh_*`` host data).

    Raises ``SshEndpointError`` for hosts pyinfra reaches otherwise (``@local``, ``@docker``)
    and for settings that need a person (a password, a key passphrase).
    """
    if host_name.startswith("@"):
        raise SshEndpointError(
            f"host {host_name}: only hosts reached over SSH can be used here "
            f"(connector {host_name.split('/', 1)[0]})"
        )
    for unsupported in INTERACTIVE_KEYS:
        if data.get(unsupported):
            raise SshEndpointError(
                f"host {host_name}: {unsupported} is set, but iotfleet connects unattended "
                "(SSH BatchMode): use a key without a passphrase or an ssh-agent"
            )

    def text(key: str) -> str | None:
        value = data.get(key)
        return None if value in (None, "") else str(value)

    return SshEndpoint(
        hostname=text("ssh_hostname") or host_name,
        port=int(data.get("ssh_port") or 22),
        user=text("ssh_user"),
        key=text("ssh_key"),
        known_hosts=text("ssh_known_hosts_file"),
        strict_host_key_checking=text("ssh_strict_host_key_checking") or PYINFRA_HOST_KEY_CHECKING,
        config_file=text("ssh_config_file"),
    )
