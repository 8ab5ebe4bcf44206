"""Read a Mosquitto 2.x configuration the way the broker does: listeners and their settings.

The suite parses the file the running broker was started with (plus ``include_dir`` files)
to learn the *effective* settings of each listener: with ``per_listener_settings false`` the
security options (anonymous, password file, ACL) are global wherever they appear; TLS options
always belong to the listener they follow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

# Options that follow per_listener_settings (global when it is false).
SECURITY_OPTIONS = frozenset(
    {
        "allow_anonymous",
        "password_file",
        "acl_file",
        "psk_file",
        "plugin",
        "auth_plugin",
        "allow_zero_length_clientid",
        "auto_id_prefix",
    }
)
# Mosquitto 2.x defaults for options the checks read.
DEFAULTS = {"allow_anonymous": "false", "require_certificate": "false", "protocol": "mqtt"}
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", "*", ""})  # noqa: S104 - we look for these


@dataclass
class ConfiguredListener:
    """A ``listener`` block: port, bind address and the options that follow it."""

    port: int
    bind_address: str | None
    options: dict[str, str] = field(default_factory=dict)
    implicit: bool = False  # the default listener (``port`` option or none at all)

    @property
    def tls(self) -> bool:
        return bool(self.options.get("certfile") or self.options.get("psk_hint"))

    @property
    def loopback(self) -> bool:
        if self.bind_address in (None, *WILDCARD_ADDRESSES):
            return False
        try:
            return ipaddress.ip_address(self.bind_address or "").is_loopback
        except ValueError:
            return self.bind_address == "localhost"

    @property
    def where(self) -> str:
        return f"{self.bind_address or '0.0.0.0'}:{self.port}"  # noqa: S104


@dataclass
class MosquittoConfig:
    per_listener_settings: bool
    global_options: dict[str, str]
    listeners: list[ConfiguredListener]
    includes: list[str]

    def effective(self, listener: ConfiguredListener, option: str) -> str | None:
        """The value the broker uses for ``option`` on ``listener`` (or its default)."""
        if option in SECURITY_OPTIONS and not self.per_listener_settings:
            value = self.global_options.get(option)
        else:
            value = listener.options.get(option)
        return value if value is not None else DEFAULTS.get(option)

    def listener(self, port: int) -> ConfiguredListener | None:
        return next((lst for lst in self.listeners if lst.port == port), None)


def _lines(text: str) -> list[tuple[str, str]]:
    """(option, value) pairs; Mosquitto only knows whole-line comments."""
    pairs = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition(" ")
        pairs.append((option, value.strip()))
    return pairs


def include_dirs(text: str) -> list[str]:
    """Directories named by ``include_dir`` in the main file (their *.conf files are read)."""
    return [value for option, value in _lines(text) if option == "include_dir" and value]


def parse_config(main: str, included: Mapping[str, str] | None = None) -> MosquittoConfig:
    """Parse the main file; ``included`` maps each included file's path to its text, in the
    order Mosquitto reads them (``include_dir`` files sorted by name, at the include point)."""
    included = dict(included or {})
    pairs: list[tuple[str, str]] = []
    includes: list[str] = []
    for option, value in _lines(main):
        if option == "include_dir":
            prefix = value.rstrip("/") + "/"
            for path in sorted(p for p in included if p.startswith(prefix)):
                includes.append(path)
                pairs.extend(_lines(included[path]))
            continue
        pairs.append((option, value))
    return _build(pairs, includes)


def _build(pairs: list[tuple[str, str]], includes: list[str]) -> MosquittoConfig:
    per_listener = False
    global_options: dict[str, str] = {}
    listeners: list[ConfiguredListener] = []
    current: ConfiguredListener | None = None
    for option, value in pairs:
        if option == "per_listener_settings":
            per_listener = value.lower() == "true"
            continue
        if option == "listener":
            parts = value.split()
            port = int(parts[0]) if parts and parts[0].isdigit() else 0
            current = ConfiguredListener(port, parts[1] if len(parts) > 1 else None)
            listeners.append(current)
            continue
        if current is None:
            global_options[option] = value
        else:
            current.options[option] = value
        if option in SECURITY_OPTIONS and not per_listener:
            # Without per-listener settings these are global wherever they appear.
            global_options[option] = value
    if "port" in global_options or not listeners:
        # The default listener: ``port`` (with the options before any listener), or,
        # with no listener at all, Mosquitto 2's local-only listener on 1883.
        if "port" in global_options:
            port = int(global_options["port"]) if global_options["port"].isdigit() else 0
            bind = global_options.get("bind_address")
            listeners.insert(0, ConfiguredListener(port, bind, dict(global_options), True))
        else:
            listeners.append(ConfiguredListener(1883, "127.0.0.1", {}, implicit=True))
    return MosquittoConfig(per_listener, global_options, listeners, includes)
