"""Mosquitto password files, hashed in Python exactly as ``mosquitto_passwd`` writes them.

Format ``$7$<iterations>$<base64 salt>$<base64 hash>``: PBKDF2-HMAC-SHA512, 12-byte salt,
64-byte hash, 101 iterations (Mosquitto 2.0's default). Clear passwords never leave the
control machine; an existing hash is kept when it still verifies, so an unchanged inventory
renders a byte-identical file and the broker is not reloaded for nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Return a ``$7$`` hash of ``password`` (a fresh random salt unless one is given)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored_hash: str) -> bool:
    """True if ``password`` matches a ``$7$`` (PBKDF2) or ``$6$`` (salted SHA-512) hash."""
    parts = stored_hash.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations = int(parts[2])
            salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            actual = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), salt, iterations, len(expected)
            )
            return hmac.compare_digest(actual, expected)
        if len(parts) == 4 and parts[1] == "6":
            salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            actual = hashlib.sha512(password.encode() + salt).digest()
            return hmac.compare_digest(actual, expected)
    except ValueError:
        return False
    return False


def parse_password_file(text: str) -> dict[str, str]:
    """Return ``{username: hash}`` from a password file (comments and blanks ignored)."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, stored = line.partition(":")
        entries[user] = stored
    return entries


def render_password_file(passwords: Mapping[str, str], existing: Mapping[str, str]) -> str:
    """Render the file for ``{username: clear password}``.

    A user's existing hash is reused when the password still verifies against it, so only
    changed passwords get a new salt; users not in ``passwords`` disappear.
    """
    lines = []
    for user in sorted(passwords):
        if ":" in user or "\n" in user:
            raise ValueError(f"username {user!r} cannot be written to a Mosquitto password file")
        old = existing.get(user)
        if old is not None and verify_password(passwords[user], old):
            stored = old
        else:
            stored = hash_password(passwords[user])
        lines.append(f"{user}:{stored}\n")
    return "".join(lines)
