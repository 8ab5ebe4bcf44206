"""The fleet's own probe identities, which the compliance checks log in as.

A check that logged in as a real device would take its client id (Mosquitto forces client id
= username) and disconnect it every night. iotfleet therefore issues two devices of its own
(certificates like any device, ACL confined to their own prefix) and gives the first a
password too, so it can also probe password and certificate+password listeners. Their names
carry the reserved prefix: no inventory entry can take them.
"""

from __future__ import annotations

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
