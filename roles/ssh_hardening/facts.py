"""Facts the sshd hardening role reads before it changes anything."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class InstalledDropinDigest(FactBase[str | None]):
    """SHA-256 of the installed sshd drop-in; None when it is not there."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then sha256sum {quoted}; fi"

    def process(self, output: list[str]) -> str | None:
        return output[0].split()[0] if output and output[0].strip() else None


class ExistingPaths(FactBase[list[str]]):
    """Which of ``paths`` exist on the host. Never fails: a path that another rollout removes
    meanwhile is simply not listed (pyinfra's ``File`` fact errors when a file goes between its
    ``stat`` and its ``ls``)."""

    def command(self, paths: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        return f'for p in {quoted}; do if [ -e "$p" ]; then echo "$p"; fi; done; true'

    @staticmethod
    def default() -> list[str]:
        return []

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]
