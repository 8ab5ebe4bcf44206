"""Facts the firewall role reads before it changes anything."""

from __future__ import annotations

from pyinfra.api import FactBase


class LoadedRulesetDigest(FactBase[str | None]):
    """Digest in the comment of the loaded ``inet iotfleet`` table; None if not loaded."""

    def command(self) -> str:
        pattern = r's/.*comment "iotfleet ruleset \([0-9a-f]*\)".*/\1/p'
        return f"nft list table inet iotfleet 2>/dev/null | sed -n '{pattern}' || true"

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


class SshConnection(FactBase[tuple[str, int] | None]):
    """(client address, server port) of the SSH session pyinfra runs on, if any."""

    def command(self) -> str:
        return 'echo "${SSH_CONNECTION:-}"'

    def process(self, output: list[str]) -> tuple[str, int] | None:
        parts = output[0].split() if output else []
        return (parts[0], int(parts[3])) if len(parts) == 4 else None
