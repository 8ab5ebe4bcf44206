"""A file a role puts on a host: content, owner, mode, and what the service must do on change."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

# What a changed file asks of the service, weakest first.
Action = Literal["none", "reload", "restart", "daemon-reload"]
# What a file holds, which decides what ``--diff`` may show of it: configuration and public
# trust material as a text diff, password files by username only, secrets and binaries never.
Holds = Literal["config", "trust", "users", "secret", "binary"]


@dataclass(frozen=True)
class ManagedFile:
    path: str
    content: bytes
    owner: str
    group: str
    mode: str  # octal, e.g. "640"
    action: Action = "none"
    holds: Holds = "secret"  # what --diff may show (unless stated: nothing)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def staged_name(self) -> str:
        """File name in the staging directory (unique: the live path, flattened)."""
        return self.path.strip("/").replace("/", "__")

    def matches(self, state: FileState | None) -> bool:
        """True if the live file already has this content, owner, group and mode."""
        return state is not None and state == FileState(
            self.owner, self.group, self.mode.lstrip("0") or "0", self.sha256
        )

    def __repr__(self) -> str:  # never show content: it may be a key or a password file
        return f"ManagedFile({self.path!r}, {self.owner}:{self.group} {self.mode})"


@dataclass(frozen=True)
class FileState:
    """A live file as a host reports it (``stat -c '%U %G %a'`` and sha256)."""

    owner: str
    group: str
    mode: str
    sha256: str
