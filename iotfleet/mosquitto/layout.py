"""The broker file spec: where iotfleet puts each of Mosquitto's files on a broker, with the
owner, group and mode it must have, what it holds and what a change asks of the service.

The one place that states these facts: the role renders and installs from it, the compliance
checks judge a host against it, the integration tests break hosts against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from iotfleet.mosquitto.managed_file import Action, Holds, ManagedFile

CONFIG_DIR = "/etc/mosquitto"
CONFIG = f"{CONFIG_DIR}/mosquitto.conf"
CERT_DIR = f"{CONFIG_DIR}/certs"
CA_CHAIN = f"{CERT_DIR}/ca-chain.pem"
SERVER_CERT = f"{CERT_DIR}/server.pem"
SERVER_KEY = f"{CERT_DIR}/server.key"
CRL = f"{CERT_DIR}/crl.pem"
# An edge broker's bridge identity: the client certificate it logs in with at its cores.
BRIDGE_CERT = f"{CERT_DIR}/bridge.pem"
BRIDGE_KEY = f"{CERT_DIR}/bridge.key"
# One password file per listener (ports are unique per broker): each holds only the identities
# whose auth allows a password on that listener.
PASSWORD_FILE_PREFIX = f"{CONFIG_DIR}/passwd-"
# The single shared file of earlier releases; removed by the rollout.
LEGACY_PASSWORD_FILE = f"{CONFIG_DIR}/passwd"
ACL_FILE = f"{CONFIG_DIR}/acl"
# The usernames the broker holds, one a line: its plugin lets no other name in (the ACL's
# patterns would give any name its own device topics).
IDENTITIES_FILE = f"{CONFIG_DIR}/identities"
DROPIN_DIR = "/etc/systemd/system/mosquitto.service.d"
DROPIN = f"{DROPIN_DIR}/iotfleet-hardening.conf"
PERSISTENCE_DIR = "/var/lib/mosquitto/"

# Root-only: the broker's own health-check identity (certificate, key, password).
HEALTH_DIR = "/etc/iotfleet/health"
HEALTH_CERT = f"{HEALTH_DIR}/client.pem"
HEALTH_KEY = f"{HEALTH_DIR}/client.key"
# mosquitto_pub reads its default options from $XDG_CONFIG_HOME/mosquitto_pub: this keeps the
# health password off the command line (and out of `ps`).
HEALTH_OPTIONS = f"{HEALTH_DIR}/mosquitto_pub"

STATE_DIR = "/var/lib/iotfleet/mosquitto"
STAGING_DIR = f"{STATE_DIR}/staging"
ROLLBACK_DIR = f"{STATE_DIR}/last-good"
# One apply at a time per broker (flock); the holder file next to it says who holds it.
APPLY_LOCK = f"{STATE_DIR}/apply.lock"
# Present once a configuration went live healthy; the listeners it had (the rollback's check).
APPLIED_MARK = f"{STATE_DIR}/applied"
APPLIED_LISTENERS = f"{STATE_DIR}/applied-listeners"
TOOLS_DIR = "/usr/local/lib/iotfleet"
APPLY_SCRIPT = f"{TOOLS_DIR}/mosquitto-apply"
# iotfleet's Mosquitto plugin (root 0644: the sandboxed broker only reads it).
AUTH_PLUGIN = f"{TOOLS_DIR}/iotfleet_auth.so"

SERVICE = "mosquitto"
OWNER = "root"
# The system user and group of Debian's package: the broker runs as them, sandboxed.
RUN_USER = "mosquitto"
GROUP = "mosquitto"


def password_file(port: int) -> str:
    """The password file of the listener on ``port``."""
    return f"{PASSWORD_FILE_PREFIX}{int(port)}"


# -- owner, group, mode and role of every file and directory ---------------------------------

Kind = Literal["regular file", "directory"]  # as ``stat -c %F`` prints it


@dataclass(frozen=True)
class BrokerFile:
    """One file or directory iotfleet keeps on a broker."""

    path: str
    owner: str
    group: str
    mode: str  # 4-digit octal, as ``stat -c %a`` prints it zero-padded
    what: str  # for people: "broker private key"
    holds: Holds = "config"
    action: Action = "none"
    kind: Kind = "regular file"

    def with_content(self, content: bytes) -> ManagedFile:
        """This file with the bytes the role puts there."""
        return ManagedFile(
            self.path, content, self.owner, self.group, self.mode.lstrip("0"), self.action,
            self.holds,
        )  # fmt: skip


def _directory(path: str, group: str, mode: str, what: str) -> BrokerFile:
    return BrokerFile(path, OWNER, group, mode, what, kind="directory")


def _private(path: str, what: str, holds: Holds, action: Action) -> BrokerFile:
    """Read by the sandboxed broker through its group, by nobody else."""
    return BrokerFile(path, OWNER, GROUP, "0640", what, holds, action)


CONFIG_DIR_FILE = _directory(CONFIG_DIR, GROUP, "0750", "config directory")
CERT_DIR_FILE = _directory(CERT_DIR, GROUP, "0750", "certificate directory")
IOTFLEET_ETC_DIR_FILE = _directory("/etc/iotfleet", "root", "0755", "iotfleet's settings")
HEALTH_DIR_FILE = _directory(HEALTH_DIR, "root", "0700", "health identity directory")
TOOLS_DIR_FILE = _directory(TOOLS_DIR, "root", "0755", "iotfleet's tools")
DIRECTORIES = (
    CONFIG_DIR_FILE,
    CERT_DIR_FILE,
    IOTFLEET_ETC_DIR_FILE,
    HEALTH_DIR_FILE,
    TOOLS_DIR_FILE,
)

CONFIG_FILE = _private(CONFIG, "broker configuration", "config", "restart")
ACL = _private(ACL_FILE, "ACL", "config", "reload")
IDENTITIES = _private(IDENTITIES_FILE, "identities", "users", "reload")
CA_CHAIN_FILE = _private(CA_CHAIN, "CA chain", "trust", "restart")
SERVER_CERT_FILE = _private(SERVER_CERT, "broker certificate", "trust", "restart")
SERVER_KEY_FILE = _private(SERVER_KEY, "broker private key", "secret", "restart")
BRIDGE_CERT_FILE = _private(BRIDGE_CERT, "bridge certificate", "trust", "restart")
BRIDGE_KEY_FILE = _private(BRIDGE_KEY, "bridge private key", "secret", "restart")
# Mosquitto re-reads CRLs only on restart.
CRL_FILE = _private(CRL, "CRL", "trust", "restart")
DROPIN_FILE = BrokerFile(
    DROPIN, "root", "root", "0644", "sandbox drop-in", "config", "daemon-reload"
)
# The broker only reads the plugin, and loads it at start.
AUTH_PLUGIN_FILE = BrokerFile(
    AUTH_PLUGIN, "root", "root", "0644", "auth plugin", "binary", "restart"
)
APPLY_SCRIPT_FILE = BrokerFile(APPLY_SCRIPT, "root", "root", "0755", "apply script", "config")
HEALTH_CERT_FILE = BrokerFile(HEALTH_CERT, "root", "root", "0600", "health certificate", "trust")
HEALTH_KEY_FILE = BrokerFile(HEALTH_KEY, "root", "root", "0600", "health key", "secret")
HEALTH_OPTIONS_FILE = BrokerFile(
    HEALTH_OPTIONS, "root", "root", "0600", "health password", "secret"
)


def password_file_spec(port: int) -> BrokerFile:
    """The password file of the listener on ``port`` (hashes: shown by username only)."""
    return _private(password_file(port), f"password file of listener {port}", "users", "reload")


def broker_files(
    password_ports: tuple[int, ...] | list[int], *, bridge: bool = False
) -> list[BrokerFile]:
    """Every file and directory iotfleet keeps on a broker whose password listeners are on
    ``password_ports``, in the order the checks report them; ``bridge``: an edge broker of a
    multi-site fleet, which also keeps its bridge identity's certificate and key."""
    return [
        CONFIG_DIR_FILE,
        CERT_DIR_FILE,
        CONFIG_FILE,
        ACL,
        IDENTITIES,
        *(password_file_spec(port) for port in password_ports),
        CA_CHAIN_FILE,
        SERVER_CERT_FILE,
        SERVER_KEY_FILE,
        *((BRIDGE_CERT_FILE, BRIDGE_KEY_FILE) if bridge else ()),
        CRL_FILE,
        DROPIN_FILE,
        HEALTH_DIR_FILE,
        HEALTH_CERT_FILE,
        HEALTH_KEY_FILE,
        HEALTH_OPTIONS_FILE,
        TOOLS_DIR_FILE,
        APPLY_SCRIPT_FILE,
        AUTH_PLUGIN_FILE,
    ]
