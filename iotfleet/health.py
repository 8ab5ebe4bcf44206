"""The identity each broker uses to check its own listeners after a (re)start."""

from __future__ import annotations

import hashlib

HEALTH_PREFIX = "iotfleet-health-"
HEALTH_TOPIC_ROOT = "iotfleet/health"


def health_identity_name(broker_name: str) -> str:
    """Reserved prefix, so no device or client can take it; long broker names are hashed to
    stay within the 64 characters an identity may have."""
    name = HEALTH_PREFIX + broker_name
    if len(name) <= 64:
        return name
    return HEALTH_PREFIX + hashlib.sha256(broker_name.encode()).hexdigest()[:32]


def health_topic(broker_name: str) -> str:
    """The only topic the health identity may use."""
    return f"{HEALTH_TOPIC_ROOT}/{health_identity_name(broker_name)}"
