"""SSH to brokers for the inside checks: testinfra's ``ssh://`` backend, one connection per host.

Each host gets a generated ssh_config with exactly the inventory's settings (address, user,
key, port, known_hosts, host key checking) and BatchMode. OpenSSH's ControlMaster keeps one
connection per host open for the whole run; it is closed when the run ends. The config and
the control sockets live in a private 0700 directory on the control machine: nothing is
written on the hosts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from iotfleet.model.ssh import SshEndpoint

CONTROL_PERSIST = 120  # seconds a master outlives its last command (closed at the end anyway)
CONNECT_TIMEOUT = 10
_SAFE_ALIAS = re.compile(r"[^A-Za-z0-9._-]")


def _quote(value: str) -> str:
    """ssh_config quoting: double quotes around values with spaces."""
    if '"' in value or "\n" in value:
        raise ValueError(f"unsupported character in ssh setting {value!r}")
    return f'"{value}"' if " " in value else value


def host_alias(host_name: str) -> str:
    """A Host pattern for the generated config (no wildcards, unlike some inventory names)."""
    return "iotfleet-" + _SAFE_ALIAS.sub("_", host_name)


def ssh_config_text(alias: str, endpoint: SshEndpoint, control_dir: Path) -> str:
    """An ssh_config that makes ``ssh ALIAS`` connect exactly as pyinfra does."""
    options = endpoint.openssh_options()
    include = [value for option, value in options if option == "Include"]
    lines = [f"Host {alias}"]
    lines += [f"  {option} {_quote(value)}" for option, value in options if option != "Include"]
    lines += [
        f"  ConnectTimeout {CONNECT_TIMEOUT}",
        "  ControlMaster auto",
        f"  ControlPath {_quote(str(control_dir / '%C'))}",
        f"  ControlPersist {CONTROL_PERSIST}",
        "  ServerAliveInterval 15",
        "  LogLevel ERROR",
    ]
    # Settings above win (ssh takes the first value it reads); the rest comes from there.
    lines += [f"  Include {_quote(value)}" for value in include]
    return "\n".join(lines) + "\n"


class HostConnections:
    """testinfra hosts over SSH, opened on first use and closed together.

    Use as a context manager; ``host(name, endpoint)`` returns a testinfra ``Host``.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._hosts: dict[str, Any] = {}
        self._configs: dict[str, Path] = {}

    def __enter__(self) -> HostConnections:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _private_dir(self) -> Path:
        if self._dir is None:
            # Short path: control sockets must fit in a unix socket name (~100 bytes).
            self._dir = Path(tempfile.mkdtemp(prefix="iotfleet-ssh-"))
            self._dir.chmod(0o700)
        return self._dir

    def config_path(self, host_name: str, endpoint: SshEndpoint) -> Path:
        if host_name not in self._configs:
            directory = self._private_dir()
            path = directory / f"{host_alias(host_name)}.conf"
            path.write_text(ssh_config_text(host_alias(host_name), endpoint, directory))
            self._configs[host_name] = path
        return self._configs[host_name]

    def host(self, host_name: str, endpoint: SshEndpoint) -> Any:
        """The testinfra host for ``host_name`` (one shared SSH connection)."""
        if host_name not in self._hosts:
            import testinfra

            config = self.config_path(host_name, endpoint)
            self._hosts[host_name] = testinfra.get_host(
                f"ssh://{host_alias(host_name)}",
                ssh_config=str(config),
                controlpersist=CONTROL_PERSIST,
                timeout=CONNECT_TIMEOUT,
            )
        return self._hosts[host_name]

    def close(self) -> None:
        """Close every master connection and remove the private directory."""
        for host_name, config in self._configs.items():
            subprocess.run(
                ["ssh", "-F", str(config), "-O", "exit", host_alias(host_name)],
                capture_output=True,
                timeout=15,
                check=False,
            )
        self._hosts.clear()
        self._configs.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
