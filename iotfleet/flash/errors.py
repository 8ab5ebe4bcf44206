"""Why a board was not flashed; every message names the board and never carries a secret."""

from __future__ import annotations

from typing import Literal

FailureKind = Literal[
    "input",  # bad inventory data for this board (layout, firmware, secrets, passphrase)
    "port",  # the port does not exist or cannot be opened
    "busy",  # another flasher holds the port
    "no-answer",  # nothing answers the bootloader protocol
    "disconnected",  # the board went away mid-conversation
    "refused",  # identity check: wrong MAC, or a different board for an enrolled device
    "chip",  # not an ESP8266, flash too small, ...
    "verify",  # written data does not read back the same
    "failed",  # anything else esptool reported
]


class FlashError(Exception):
    """A board could not be flashed (``kind`` says why, for the registry and for tests)."""

    def __init__(self, message: str, kind: FailureKind = "failed") -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
