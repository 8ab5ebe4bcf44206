"""Which broker a gateway dials next: the image's order, round the list, back to the first.

The image lists a gateway's brokers in order of preference (in a multi-site fleet: its site's
edges, then its cores). The gateway starts with the first; when the broker it uses dies
(connection lost or refused) it tries the next, round the list, with the usual back-off
between attempts. While it is on a later broker it looks every ``RETURN_INTERVAL`` seconds
whether an earlier one listens again (a plain TCP connect: cheap enough for an ESP8266, which
cannot hold two TLS sessions) and, if so, moves back: a site's traffic returns to its edge
after the outage, as a bridge returns to its first core. A move back that fails goes straight
back to the broker it left (no back-off), so a broker that listens but refuses the gateway
costs one attempt per interval, not a loop.

The reference sketch (files/firmware/iotfleet-gateway/src/main.cpp) does the same, with the
same interval (``kReturnIntervalMs``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

RETURN_INTERVAL = 60.0  # seconds between looks at the preferred brokers from a later one
PROBE_TIMEOUT = 3.0  # seconds a look at a preferred broker may take


@dataclass
class BrokerOrder:
    """The index of the broker to dial, in a list of ``count`` (the image's order)."""

    count: int
    current: int = 0
    left: int | None = None  # where a move back came from: the fallback if it fails

    def failed(self) -> None:
        """The current broker refused or lost the connection: the next one (or, for a failed
        move back, the one the gateway left)."""
        if self.left is not None:
            self.current, self.left = self.left, None
        else:
            self.current = (self.current + 1) % self.count
        if self.count == 1:
            self.current = 0

    def connected(self) -> None:
        self.left = None

    def preferred(self) -> range:
        """The brokers before the current one, best first (none while on the first)."""
        return range(self.current)

    def move_back(self, index: int) -> None:
        """Leave the current broker for the earlier ``index``."""
        self.current, self.left = index, self.current


def listens(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` accepts a TCP connection (nothing is sent on it)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True
