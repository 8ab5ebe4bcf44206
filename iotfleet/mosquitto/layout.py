"""Where iotfleet puts Mosquitto's files on a broker. Shared by the role and the checks."""

from __future__ import annotations

CONFIG_DIR = "/etc/mosquitto"
CONFIG = f"{CONFIG_DIR}/mosquitto.conf"
CERT_DIR = f"{CONFIG_DIR}/certs"
CA_CHAIN = f"{CERT_DIR}/ca-chain.pem"
SERVER_CERT = f"{CERT_DIR}/server.pem"
SERVER_KEY = f"{CERT_DIR}/server.key"
CRL = f"{CERT_DIR}/crl.pem"
# One password file per listener (ports are unique per broker): each holds only the identities
# whose auth allows a password on that listener.
PASSWORD_FILE_PREFIX = f"{CONFIG_DIR}/passwd-"
# The single shared file of earlier releases; removed by the rollout.
LEGACY_PASSWORD_FILE = f"{CONFIG_DIR}/passwd"
ACL_FILE = f"{CONFIG_DIR}/acl"
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
TOOLS_DIR = "/usr/local/lib/iotfleet"
APPLY_SCRIPT = f"{TOOLS_DIR}/mosquitto-apply"
# iotfleet's Mosquitto plugin (root 0644: the sandboxed broker only reads it).
AUTH_PLUGIN = f"{TOOLS_DIR}/iotfleet_auth.so"

SERVICE = "mosquitto"
OWNER = "root"
GROUP = "mosquitto"


def password_file(port: int) -> str:
    """The password file of the listener on ``port``."""
    return f"{PASSWORD_FILE_PREFIX}{int(port)}"
