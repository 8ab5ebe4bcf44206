"""Edits that weaken a rendered mosquitto.conf, to show the checks catch a broken broker."""

from __future__ import annotations


def allow_tls_1_1(_port: int, block: str) -> str:
    """A listener block that also accepts TLS 1.1 (CBC suites, OpenSSL security level 0)."""
    lines = []
    for line in block.split("\n"):
        if line.startswith("tls_version "):
            line = "tls_version tlsv1.1"
        elif line.startswith("ciphers "):
            # TLS 1.1 only has CBC suites, and OpenSSL 3 needs security level 0 for it.
            line = f"ciphers ECDHE-ECDSA-AES128-SHA:{line.split(' ', 1)[1]}:@SECLEVEL=0"
        lines.append(line)
    return "\n".join(lines)
