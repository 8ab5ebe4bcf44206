"""iotfleet's own identities, under reserved names no inventory entry can take.

Each broker's health identity checks its own listeners after a (re)start. Each edge broker's
bridge identity carries its site's traffic to the core brokers.

The probes are the identities the compliance checks log in as. A check that logged in as a
real device would take its client id (Mosquitto forces client id = username) and disconnect it
every night. iotfleet therefore issues two devices of its own (certificates like any device, ACL
confined to their own prefix) and gives the first a password too, so it can also probe password
and certificate+password listeners.

The delivery identity publishes renewed certificates to devices over MQTT.
"""

from __future__ import annotations

import hashlib

HEALTH_PREFIX = "iotfleet-health-"
HEALTH_TOPIC_ROOT = "iotfleet/health"
BRIDGE_PREFIX = "iotfleet-bridge-"


def _reserved_name(prefix: str, broker_name: str) -> str:
    """``prefix`` + broker name: no device or client can take it (reserved prefix); long broker
    names are hashed to stay within the 64 characters an identity may have."""
    name = prefix + broker_name
    if len(name) <= 64:
        return name
    return prefix + hashlib.sha256(broker_name.encode()).hexdigest()[:32]


def health_identity_name(broker_name: str) -> str:
    """The health-check identity of ``broker_name``."""
    return _reserved_name(HEALTH_PREFIX, broker_name)


def bridge_identity_name(edge_name: str) -> str:
    """The identity the bridge of edge broker ``edge_name`` logs in as at its cores (the CN of
    its client certificate, its MQTT username and client id there)."""
    return _reserved_name(BRIDGE_PREFIX, edge_name)


def bridge_state_topic(edge_name: str) -> str:
    """Where edge ``edge_name`` notifies its bridge's state (``1`` connected, ``0`` not; local
    only): the one ``$SYS`` topic its health identity may read, for the compliance check."""
    return f"$SYS/broker/connection/{bridge_identity_name(edge_name)}/state"


def health_topic(broker_name: str) -> str:
    """The only topic the health identity may use."""
    return f"{HEALTH_TOPIC_ROOT}/{health_identity_name(broker_name)}"


PROBE_DEVICE = "iotfleet-probe-1"
PROBE_PEER = "iotfleet-probe-2"  # the other device, whose topics the probe must not touch
PROBE_DEVICES = (PROBE_DEVICE, PROBE_PEER)
PROBE_PASSWORD_USERS = (PROBE_DEVICE,)

# iotfleet's own client for over-the-air certificate delivery: the only identity that may write
# a device's certificate topic (and read its status topic, to see which certificate it uses).
DELIVERY_IDENTITY = "iotfleet-delivery"


def probe_prefix(topic_root: str, name: str) -> str:
    """Topic prefix of a probe device (like a device's default ``<root>/<id>``)."""
    return f"{topic_root}/{name}"
