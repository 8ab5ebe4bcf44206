"""Exponential reconnect backoff with jitter, as the firmware does it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial``, ``initial*factor``, ... capped at ``maximum``, each +/- ``jitter``.

    Jitter keeps a fleet that lost its broker from reconnecting in lockstep.
    """

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        spread = base * self.jitter
        return min(self.maximum, max(0.0, base + self.rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self.attempts = 0
