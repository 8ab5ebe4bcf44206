"""Inventory errors that name where the problem is (host or device) and which key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One bad value: ``where`` is a host, device or client; ``key`` the inventory key path."""

    where: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}"


class InventoryError(ValueError):
    """The inventory cannot be used; every problem found is listed, nothing was touched."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid inventory ({len(self.problems)} problem(s)):\n{lines}")
