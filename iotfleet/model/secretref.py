"""References to secrets. The inventory never holds a secret in clear, only where to find it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_REF_RE = re.compile(r"^(?P<kind>env|file):(?P<target>.+)$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SecretRef:
    """``env:NAME`` (environment variable), ``file:PATH`` (file, first line) or ``generated``.

    ``generated`` secrets are created once by iotfleet and kept in the fleet's state directory.
    """

    kind: Literal["env", "file", "generated"]
    target: str = ""

    @classmethod
    def parse(cls, value: object) -> SecretRef:
        if isinstance(value, SecretRef):
            return value
        if not isinstance(value, str):
            raise ValueError("a secret must be given as 'env:NAME', 'file:PATH' or 'generated'")
        if value == "generated":
            return cls("generated")
        match = _REF_RE.match(value)
        if not match:
            # Never echo the value: it may be a password typed in clear.
            raise ValueError(
                "secrets are never written in the inventory in clear: use 'env:NAME', "
                "'file:PATH' or 'generated'"
            )
        kind, target = match["kind"], match["target"]
        if kind == "env" and not _ENV_NAME_RE.match(target):
            raise ValueError(f"{target!r} is not a valid environment variable name")
        return cls(kind, target)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.kind if self.kind == "generated" else f"{self.kind}:{self.target}"


class SecretError(ValueError):
    """A secret could not be read; the message names where and which key, never the value."""
