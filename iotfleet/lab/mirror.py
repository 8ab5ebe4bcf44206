"""The control machine's own Debian mirror, read from its apt sources (never hard-coded)."""

from __future__ import annotations

import re
from pathlib import Path

from iotfleet.lab.errors import LabError

DEB822_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
ONE_LINE_SOURCES = Path("/etc/apt/sources.list")


def mirror_from_deb822(text: str) -> str | None:
    """First ``URIs:`` of a ``deb`` stanza serving the main archive (not -security)."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        if suites and all(s.endswith("-security") for s in suites):
            continue
        uris = fields.get("uris", "").split()
        if uris:
            return uris[0]
    return None


def mirror_from_one_line(text: str) -> str | None:
    """URI of the first ``deb`` line that is not a security archive."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        parts = line.split()
        if not parts or parts[0] != "deb":
            continue
        rest = parts[1:]
        if rest and rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2 and not rest[1].endswith("-security"):
            return rest[0]
    return None


def machine_mirror(deb822: Path = DEB822_SOURCES, one_line: Path = ONE_LINE_SOURCES) -> str:
    """The Debian mirror this machine installs from."""
    for path, parse in ((deb822, mirror_from_deb822), (one_line, mirror_from_one_line)):
        if path.is_file():
            found = parse(path.read_text())
            if found:
                return found.rstrip("/")
    raise LabError(
        f"cannot find this machine's Debian mirror in {deb822} or {one_line}: "
        "the lab builds its hosts from the same mirror the machine uses"
    )
