"""Mosquitto password files, hashed in Python exactly as ``mosquitto_passwd`` writes them.

Format ``$7$<iterations>$<base64 salt>$<base64 hash>``: PBKDF2-HMAC-SHA512, 12-byte salt,
64-byte hash; the iteration count is ``mosquitto_password_iterations`` (Mosquitto's own
default, 101, is far too cheap). Clear passwords never leave the control machine. Salts are
derived, not random (``derive_salt``), so an unchanged inventory renders a byte-identical file
without reading the live hashes back from the host, and the broker is not reloaded for
nothing. A user's entry is the same on every listener and broker of the fleet, so a run hashes
each password once (``memo``), not once per broker and listener: at 10,000 PBKDF2 rounds that
is 12 ms per entry, 3 s of a 20-broker run otherwise. A stolen file tells no more for it: every
broker takes the same password anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, MutableMapping

ITERATIONS = 101  # mosquitto_passwd's default; iotfleet renders its own count
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


def derive_salt(key: bytes, *, user: str, password: str) -> bytes:
    """The salt of one entry: HMAC-SHA256 of the fleet's salt key over user and password. The
    same inventory renders byte-identical files without reading the host; a changed password
    gets a new salt; another user with the same password gets another hash."""
    message = "\0".join((user, password)).encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:SALT_BYTES]


def render_password_file(
    passwords: Mapping[str, str],
    salt_of: Callable[[str, str], bytes],
    iterations: int,
    memo: MutableMapping[tuple[str, str, int], str] | None = None,
) -> str:
    """Render the file for ``{username: clear password}``; ``salt_of(user, password)`` gives
    each entry's salt. A hash made with another iteration count is simply rendered anew.
    ``memo``: hashes already made in this run (in memory only), by user, password, rounds."""
    lines = []
    for user in sorted(passwords):
        if ":" in user or "\n" in user:
            raise ValueError(f"username {user!r} cannot be written to a Mosquitto password file")
        password = passwords[user]
        key = (user, password, iterations)
        stored = memo.get(key) if memo is not None else None
        if stored is None:
            stored = hash_password(password, salt=salt_of(user, password), iterations=iterations)
            if memo is not None:
                memo[key] = stored
        lines.append(f"{user}:{stored}\n")
    return "".join(lines)
