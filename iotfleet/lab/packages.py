"""Package sets of the lab. Later issues add to these constants; both are part of the cache key."""

from __future__ import annotations

import hashlib
import json

SUITES = ("bookworm", "trixie")
DEFAULT_SUITE = "bookworm"

# Installed in every host's base root by debootstrap (a minimal server that boots and
# answers SSH). ``python3`` is what pyinfra facts and testinfra need on a target.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "python3",
)

# Served to the hosts by the lab's own apt repository (with their dependencies), so that
# ``apt-get install`` on a host works offline. ``hello`` is a small package for tests.
# ``python3-serial``: a flash station runs pyserial's RFC 2217 relay on its board's device.
REPO_PACKAGES: tuple[str, ...] = (
    "mosquitto",
    "mosquitto-clients",
    "nftables",
    "hello",
    "python3-serial",
)

# Bump when the way the base is customised changes, so old cache entries are not reused.
BASE_FORMAT = 1


def cache_key(
    suite: str,
    base: tuple[str, ...] = BASE_PACKAGES,
    repo: tuple[str, ...] = REPO_PACKAGES,
) -> str:
    """A short key naming one cache entry: suite + both package sets + format."""
    payload = json.dumps(
        {"suite": suite, "base": sorted(base), "repo": sorted(repo), "format": BASE_FORMAT},
        sort_keys=True,
    )
    return f"{suite}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
