"""Find a fleet's secrets in text: every value it keeps, and the shapes of keys and hashes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# A PEM private key of any kind, a Mosquitto password hash ($7$ PBKDF2, $6$ salted SHA-512).
SECRET_SHAPES = ("PRIVATE KEY-----", "$7$", "$6$")
SHORTEST_SECRET = 8


def kept_secrets(fleet_state: Path) -> dict[str, str]:
    """``{where: value}`` of every secret the fleet keeps (generated passwords, passphrases)."""
    found: dict[str, str] = {}
    for path in sorted((fleet_state / "secrets").rglob("*")):
        if path.is_file():
            value = path.read_text().strip()
            if len(value) >= SHORTEST_SECRET:
                found[str(path.relative_to(fleet_state))] = value
    return found


def leaks(text: str, secrets: dict[str, str], shapes: Iterable[str] = SECRET_SHAPES) -> list[str]:
    """What of ``secrets`` (named, never quoted) and of the secret shapes appears in ``text``."""
    problems = [f"a secret kept as {where}" for where, value in secrets.items() if value in text]
    problems += [f"something shaped like {shape!r}" for shape in shapes if shape in text]
    return problems
