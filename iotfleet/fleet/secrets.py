"""Resolve secret references (env, file, generated) without ever echoing a value.

Generated secrets are created once and kept, 0600, in the fleet's state directory, so a
rerun (or a classroom regenerated from the same roster) reuses them. A planning run (a rollout
being loaded, ``--dry``) generates missing ones in memory, into its stage, written only when
the run commits; a read-only store (``iotfleet check``) refuses to make any.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _random
import stat
from pathlib import Path

from pydantic import SecretStr

from iotfleet.fs.atomic import write_file_atomically
from iotfleet.fs.stage import Stage, staged
from iotfleet.model import SecretRef
from iotfleet.model.secretref import SecretError as SecretError  # raised by the store

GENERATED_BYTES = 24  # 32 URL-safe characters


class SecretStore:
    """Reads ``env:``/``file:`` references and keeps ``generated`` secrets under ``directory``.

    ``stage``: record new generated secrets there (committed with the run) instead of writing
    them. ``read_only``: a missing generated secret is an error, never created.
    """

    def __init__(
        self, directory: Path, *, stage: Stage | None = None, read_only: bool = False
    ) -> None:
        self.directory = directory
        self.stage = stage
        self.read_only = read_only

    def resolve(self, ref: SecretRef, slot: str, *, where: str, key: str) -> SecretStr:
        """Return the secret ``ref`` points to.

        Args:
            ref: the reference from the inventory.
            slot: stable name of a generated secret, e.g. ``password/dashboard``.
            where: who owns the secret (``client dashboard``), for messages.
            key: the inventory key (``password``), for messages.
        """
        if ref.kind == "env":
            value = os.environ.get(ref.target)
            if not value:
                raise SecretError(f"{where}: {key}: environment variable {ref.target} is not set")
            return SecretStr(value)
        if ref.kind == "file":
            return SecretStr(_read_secret_file(Path(ref.target).expanduser(), where, key))
        return SecretStr(self.generated(slot))

    def generated(self, slot: str) -> str:
        """Return the generated secret for ``slot``, creating it on first use."""
        path = self.slot_path(slot)
        stage = self.stage if self.stage is not None and not self.stage.committed else None
        if not (stage.exists(path) if stage is not None else path.exists()):
            if self.read_only:
                raise SecretError(
                    f"no generated secret {slot} in {self.directory} yet: run the rollout first"
                )
            value = _random.token_urlsafe(GENERATED_BYTES)
            # Two concurrent runs may race here: the first writer wins, both read its value
            # (a staged one fails its commit instead, having rendered files from its own).
            with staged(stage) if stage is not None else contextlib.nullcontext():
                write_file_atomically(path, (value + "\n").encode(), mode=0o600, overwrite=False)
        data = stage.read_bytes(path) if stage is not None else path.read_bytes()
        return data.decode().strip()

    def generated_file(self, slot: str) -> Path:
        """Path of the generated secret for ``slot`` (created on first use), for settings that
        take a file. Writes at once, whatever the stage: only for commands that create state."""
        if not self.slot_path(slot).exists():
            SecretStore(self.directory, read_only=self.read_only).generated(slot)
        return self.slot_path(slot)

    def forget(self, slot: str) -> None:
        """Drop a generated secret so the next use creates a new one (e.g. a student reset)."""
        self.slot_path(slot).unlink(missing_ok=True)

    def slot_path(self, slot: str) -> Path:
        """Where the generated secret ``slot`` is kept."""
        parts = slot.split("/")
        if not all(p and p not in {".", ".."} for p in parts):
            raise ValueError(f"invalid secret slot {slot!r}")
        return self.directory.joinpath(*parts)


def _read_secret_file(path: Path, where: str, key: str) -> str:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecretError(f"{where}: {key}: secret file {path} does not exist") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"{where}: {key}: secret file {path} is readable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
        )
    lines = path.read_text().splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise SecretError(f"{where}: {key}: secret file {path} is empty")
    return value
