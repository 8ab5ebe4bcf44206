"""Facts the firewall role reads before it changes anything."""

from __future__ import annotations

from pyinfra.api import FactBase


class LoadedRuleset(FactBase[tuple[str | None, str | None, str | None]]):
    """(digest in the loaded ``inet iotfleet`` table's comment, SHA-256 of the table as loaded
    now, SHA-256 recorded when iotfleet loaded it); None where missing. A rule added or
    removed by hand changes the second one, so the next rollout puts the table back."""

    def command(self, recorded: str) -> str:
        pattern = r's/.*comment "iotfleet ruleset \([0-9a-f]*\)".*/\1/p'
        # -t: without the elements of sets (the limit's sources change all the time).
        return (
            "if nft list table inet iotfleet >/dev/null 2>&1; then "
            f"nft list table inet iotfleet | sed -n '{pattern}' | head -n1; "
            "nft -t list table inet iotfleet | sha256sum | cut -d' ' -f1; "
            f"cat {recorded} 2>/dev/null || echo; fi"
        )

    @staticmethod
    def default() -> tuple[str | None, str | None, str | None]:
        return None, None, None  # no output: the table is not loaded

    def process(self, output: list[str]) -> tuple[str | None, str | None, str | None]:
        values = [line.strip() or None for line in output] + [None, None, None]
        return values[0], values[1], values[2]


class SshConnection(FactBase[tuple[str, int] | None]):
    """(client address, server port) of the SSH session pyinfra runs on, if any."""

    def command(self) -> str:
        return 'echo "${SSH_CONNECTION:-}"'

    def process(self, output: list[str]) -> tuple[str, int] | None:
        parts = output[0].split() if output else []
        return (parts[0], int(parts[3])) if len(parts) == 4 else None
