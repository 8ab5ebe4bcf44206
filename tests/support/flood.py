"""Connection floods from the control machine: how many TCP connections a listener accepts
from one source when it is offered many at once (a password guesser's first step)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

# Below the kernel's first SYN retransmission (1 s): a dropped SYN counts as refused instead
# of being retried by the attacker's own kernel.
ATTEMPT_TIMEOUT = 0.9


@dataclass(frozen=True)
class Flood:
    offered: int
    accepted: int
    seconds: float
    accepted_at: list[float] = field(default_factory=list)  # seconds from the start

    def accepted_in(self, start: float, end: float) -> int:
        return sum(1 for t in self.accepted_at if start <= t < end)


async def _attempt(host: str, port: int, started: float, accepted: list[float]) -> None:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), ATTEMPT_TIMEOUT
        )
    except (OSError, TimeoutError):
        return
    accepted.append(time.monotonic() - started)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _flood(host: str, port: int, per_second: int, seconds: float) -> Flood:
    accepted: list[float] = []
    started = time.monotonic()
    tasks = []
    count = int(per_second * seconds)
    for index in range(count):
        # Offer the attempts at a steady rate, like a guessing script would.
        delay = started + index / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_attempt(host, port, started, accepted)))
    await asyncio.gather(*tasks)
    return Flood(count, len(accepted), time.monotonic() - started, sorted(accepted))


def flood(host: str, port: int, per_second: int = 200, seconds: float = 1.0) -> Flood:
    """Offer ``per_second * seconds`` new TCP connections to ``host:port`` from here."""
    return asyncio.run(_flood(host, port, per_second, seconds))
