"""Where the CA passphrase comes from: a 0600 file or an environment variable, never the inventory.

The value lives only inside a ``Passphrase`` whose repr hides it, so it cannot end up in a log
line, an exception text or a rich traceback by accident.
"""

from __future__ import annotations

import os
import stat

from iotfleet.pki.errors import PassphraseError
from iotfleet.pki.spec import MIN_PASSPHRASE_CHARS, PkiSettings


class Passphrase:
    """The CA passphrase and a description of where it came from (safe to print)."""

    __slots__ = ("_value", "source")

    def __init__(self, value: bytes, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> bytes:
        """The secret bytes, for key (de)serialization only."""
        return self._value

    def __repr__(self) -> str:
        return f"Passphrase(<hidden>, source={self.source!r})"

    __str__ = __repr__


def passphrase_source(settings: PkiSettings) -> str:
    """Human description of where ``read_passphrase`` looks."""
    if settings.passphrase_file is not None:
        return f"passphrase file {settings.passphrase_file}"
    return f"environment variable {settings.passphrase_env}"


def read_passphrase(settings: PkiSettings) -> Passphrase:
    """Read the passphrase: ``passphrase_file`` when set (must be 0600/0400), else the env var."""
    source = passphrase_source(settings)
    if settings.passphrase_value is not None:
        value = settings.passphrase_value
    elif settings.passphrase_file is not None:
        value = _read_passphrase_file(settings, source)
    else:
        # Raw bytes: decoding/encoding errors could otherwise quote parts of the secret.
        env_value = os.environb.get(os.fsencode(settings.passphrase_env))
        if env_value is None:
            raise PassphraseError(
                f"no CA passphrase: the {source} is not set (or point passphrase_file / "
                "--passphrase-file at a 0600 file holding it)"
            )
        value = env_value
    if not value:
        raise PassphraseError(f"the CA passphrase from the {source} is empty")
    return Passphrase(value, source)


def _read_passphrase_file(settings: PkiSettings, source: str) -> bytes:
    path = settings.passphrase_file
    assert path is not None
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PassphraseError(f"no CA passphrase: {source} does not exist") from None
    except OSError as exc:
        raise PassphraseError(f"cannot read the {source}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PassphraseError(f"the {source} is not a regular file")
    if info.st_mode & 0o077:
        raise PassphraseError(
            f"the {source} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o});"
            f" run: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise PassphraseError(f"cannot read the {source}: {exc.strerror}") from None
    # One trailing newline is an editor artefact, not part of the secret.
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def check_new_passphrase(passphrase: Passphrase) -> None:
    """A new CA gets a passphrase long enough to resist guessing (checked only at creation)."""
    if len(passphrase.reveal().decode(errors="replace")) < MIN_PASSPHRASE_CHARS:
        raise PassphraseError(
            f"the CA passphrase from the {passphrase.source} is shorter than "
            f"{MIN_PASSPHRASE_CHARS} characters; use e.g. `openssl rand -base64 32`"
        )
