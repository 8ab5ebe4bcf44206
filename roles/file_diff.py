"""What ``pyinfra --diff`` shows of a broker file that changes, by what the file holds.

Configuration and public trust material (certificates, the CRL) as a line diff against the
live file; password files by username only (added, removed, changed: never a hash); private
keys and other secrets only as "changes, content not shown"; binaries by digest. Owner and
mode changes are named for every file.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FactBase
from pyinfra.api.output import format_text
from pyinfra.facts.files import FileContents
from pyinfra.operations.util.files import generate_color_diff

from iotfleet.mosquitto.managed_file import FileState, ManagedFile

_LINE_DIGEST_CHARS = 12


class PasswordFileUsers(FactBase[dict[str, str]]):
    """``{username: digest of its line}`` of a Mosquitto password file: tells which entries
    changed without a hash ever reaching pyinfra's output."""

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            f"[ -f {quoted} ] && while IFS= read -r line; do "
            'printf "%s %s\\n" "${line%%:*}" '
            f'"$(printf "%s" "$line" | sha256sum | cut -c1-{_LINE_DIGEST_CHARS})"; '
            f"done < {quoted} || true"
        )

    def process(self, output: list[str]) -> Any:
        users = {}
        for line in output:
            name, _, digest = line.rpartition(" ")
            if name:
                users[name] = digest
        return users


def _line_digests(content: bytes) -> dict[str, str]:
    digests = {}
    for line in content.decode().splitlines():
        name = line.split(":", 1)[0]
        digests[name] = hashlib.sha256(line.encode()).hexdigest()[:_LINE_DIGEST_CHARS]
    return digests


def show_change(managed: ManagedFile, live: FileState | None) -> None:
    """Log what changes in ``managed`` (called only under ``--diff``)."""
    verb = "create" if live is None else "modify"
    host.log(f"Will {verb} {format_text(managed.path, bold=True)}", logger.info)
    if live is not None and (live.owner, live.group, live.mode) != (
        managed.owner,
        managed.group,
        managed.mode.lstrip("0") or "0",
    ):
        logger.info(
            "  owner and mode: %s:%s %s -> %s:%s %s",
            live.owner, live.group, live.mode, managed.owner, managed.group, managed.mode,
        )  # fmt: skip
    if live is not None and live.sha256 == managed.sha256:
        logger.info("")
        return
    if managed.holds in ("config", "trust"):
        current = host.get_fact(FileContents, path=managed.path) if live is not None else None
        old = [line + "\n" for line in current or []]
        for line in generate_color_diff(old, managed.content.decode().splitlines(keepends=True)):
            logger.info("  %s", line)
    elif managed.holds == "users":
        old_users = host.get_fact(PasswordFileUsers, path=managed.path) if live else {}
        new_users = _line_digests(managed.content)
        for name in sorted(set(old_users) | set(new_users)):
            if name not in old_users:
                logger.info("  + %s (password set, hash not shown)", name)
            elif name not in new_users:
                logger.info("  - %s (no longer logs in here)", name)
            elif old_users[name] != new_users[name]:
                logger.info("  ~ %s (password changed, hash not shown)", name)
    elif managed.holds == "binary":
        logger.info(
            "  binary: sha256 %s -> %s", live.sha256[:16] if live else "-", managed.sha256[:16]
        )
    else:
        logger.info("  holds a secret: content not shown")
    logger.info("")
