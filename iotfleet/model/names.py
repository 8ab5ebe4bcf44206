"""Validators for the names and topics the inventory uses.

They are strict on purpose: an identity name becomes a certificate CN, an MQTT username, a
file name in the PKI and part of ACL topics, so it must be safe in all four places.
"""

from __future__ import annotations

import ipaddress
import re

IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names under this prefix belong to iotfleet itself (e.g. the broker health identity).
RESERVED_PREFIX = "iotfleet-"
_DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def check_identity_name(name: str) -> str:
    """Return ``name`` if it can be an MQTT client id, CN and file name; raise ValueError."""
    if not IDENTITY_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid identity: use 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit (it becomes the MQTT client id, certificate CN "
            "and part of topic ACLs; + # / and spaces are not allowed)"
        )
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{name!r}: names starting with {RESERVED_PREFIX!r} are reserved")
    return name


def check_dns_name(name: str) -> str:
    """Return a lower-cased DNS name if valid (RFC 1123 labels, 253 chars max)."""
    candidate = name.rstrip(".").lower()
    labels = candidate.split(".")
    if not candidate or len(candidate) > 253 or not all(_DNS_LABEL_RE.match(lb) for lb in labels):
        raise ValueError(f"{name!r} is not a valid DNS name")
    if _looks_like_ip(candidate):
        raise ValueError(f"{name!r} is an IP address: list it under the IP addresses instead")
    return candidate


def is_dns_name(name: str) -> bool:
    try:
        check_dns_name(name)
    except ValueError:
        return False
    return True


def _looks_like_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_mac(value: str) -> str:
    """Return a MAC address normalised to lower-case aa:bb:cc:dd:ee:ff."""
    normalised = value.strip().lower().replace("-", ":")
    if not _MAC_RE.match(normalised):
        raise ValueError(f"{value!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return normalised


def check_topic_filter(topic: str) -> str:
    """Return ``topic`` if it is a valid MQTT topic filter (wildcards in whole levels only)."""
    if not topic or len(topic.encode()) > 65535:
        raise ValueError("a topic filter must be 1..65535 bytes")
    if "\x00" in topic or "\n" in topic:
        raise ValueError(f"{topic!r}: control characters are not allowed in topics")
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"{topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{topic!r}: '+' must be a whole level")
    return topic


def check_topic_name(topic: str) -> str:
    """Return ``topic`` if it is a concrete topic (no wildcards), e.g. a device's prefix."""
    check_topic_filter(topic)
    if "+" in topic or "#" in topic:
        raise ValueError(f"{topic!r}: wildcards are not allowed here")
    if topic.startswith("$"):
        raise ValueError(f"{topic!r}: topics starting with '$' are reserved for the broker")
    return topic


def opens_other_devices(topic: str) -> bool:
    """True if a filter granted to a device would reach beyond a fixed first level.

    ``#``, ``+/...`` and ``$SYS/...`` would let one device read or write every device's
    topics (or broker internals), which defeats per-device isolation.
    """
    first = topic.split("/", 1)[0]
    return first in {"#", "+"} or topic.startswith("$")
