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
