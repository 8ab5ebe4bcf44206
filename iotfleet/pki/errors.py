"""PKI engine exceptions. Every message names what is wrong and where; none holds a secret."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from iotfleet.fs.errors import WriteError


class PkiError(Exception):
    """Base class: something stops a PKI operation. Nothing was written when it is raised."""


class PkiInputError(PkiError):
    """The identities or settings handed to the engine are invalid (all problems listed at once)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = "invalid PKI input" if count == 1 else f"invalid PKI input ({count} problems)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class PassphraseError(PkiError):
    """The CA passphrase is missing, unreadable or wrong. Says where it looked, never what it is."""


class IndexCorruptError(PkiError):
    """The index (index.json / index.txt) or its files do not match: edited by hand or damaged."""


class CaExpiredError(PkiError):
    """The root or the issuing intermediate has expired; a person must act before issuing."""


class ClockBehindError(PkiError):
    """The clock is behind material the PKI signed (a CRL's thisUpdate, a notBefore): signing
    now would date it before what brokers already hold."""


class RootKeyOfflineError(PkiError):
    """An operation needs the root key (renewing the intermediate) but ca/root.key is not there."""


class SigningWorkerError(PkiError):
    """A process signing part of a batch died or failed; the batch was abandoned unwritten."""


class StateError(PkiError):
    """The state dir is in a shape the engine refuses to touch (e.g. a key without its cert)."""


class StateWriteError(StateError, WriteError):
    """Writing the state dir failed (disk full, permission denied): one line naming the file and
    what was not done. The temp file is gone; what an interrupted run left, the next removes."""

    def __init__(self, path: Path, cause: OSError, not_done: str) -> None:
        WriteError.__init__(self, path, cause, not_done)

    def __str__(self) -> str:
        return WriteError.__str__(self)
