"""Facts the mosquitto role reads from a broker before deciding what to change."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from iotfleet.mosquitto.managed_file import FileState


class ManagedFileStates(FactBase[dict[str, FileState]]):
    """Owner, group, mode and sha256 of each path that exists (one round trip for all)."""

    @staticmethod
    def default() -> dict[str, FileState]:
        return {}

    def command(self, paths: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (
            f'for f in {quoted}; do [ -f "$f" ] || continue; '
            'printf "%s %s %s\\n" "$(stat -c "%U %G %a" "$f")" '
            '"$(sha256sum <"$f" | cut -d" " -f1)" "$f"; done'
        )

    def process(self, output: list[str]) -> dict[str, FileState]:
        states: dict[str, FileState] = {}
        for line in output:
            owner, group, mode, digest, path = line.split(" ", 4)
            states[path] = FileState(owner, group, mode, digest)
        return states


class ServiceActive(FactBase[bool]):
    """Whether a systemd service is active right now."""

    @staticmethod
    def default() -> bool:
        return False

    def command(self, service: str) -> str:
        return f"systemctl is-active {shlex.quote(service)} || true"

    def process(self, output: list[str]) -> Any:
        return bool(output) and output[0].strip() == "active"
