"""Switching a gateway's identity (certificate, and key in a re-key) so that a power cut at any
moment leaves a certificate and key that belong together (docs/gateways.md, "Switching
identity"). The reference sketch follows the same rule.

The switch, each step complete before the next:

1. the new key, in a re-key, is already complete in ``/client.key.new`` (made at the request);
2. write ``/client.pem.new`` in full;
3. in a re-key, rename ``/client.key.new`` over ``/client.key``;
4. rename ``/client.pem.new`` over ``/client.pem``.

At boot, before the contract is read, a half-done switch is finished or undone:

- ``/client.pem.new`` and ``/client.key.new`` both there: no rename has happened yet. Remove
  ``/client.pem.new``: the old pair is intact, the certificate is still retained on the
  certificate topic and comes again, and ``/client.key.new`` stays a re-key waiting for it.
- ``/client.pem.new`` there, ``/client.key.new`` not: the key is in place (renamed, or a renewal
  on the same key). Rename ``/client.pem.new`` over ``/client.pem`` if it is a whole
  certificate for ``/client.key``; otherwise (the power went while it was written) remove it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotfleet.device.contract import CERT_FILE, KEY_FILE, PENDING_CERT_FILE, PENDING_KEY_FILE
from iotfleet.device.layouts import FlashLayout
from iotfleet.device.littlefs_image import FileStep, Remove, Rename, Write
from iotfleet.gateway.flashfile import apply_flash_steps, read_flash_files


def switch_steps(certificate_pem: bytes, *, new_key: bool) -> list[FileStep]:
    """The file operations that install ``certificate_pem``; ``new_key``: it certifies the key
    in ``/client.key.new`` (a re-key), which becomes ``/client.key``."""
    return [
        Write(PENDING_CERT_FILE, certificate_pem),
        *([Rename(PENDING_KEY_FILE, KEY_FILE)] if new_key else []),
        Rename(PENDING_CERT_FILE, CERT_FILE),
    ]


def recovery_steps(files: Mapping[str, bytes]) -> list[FileStep]:
    """What a board does at boot with the files it finds, to finish or undo a switch."""
    pending = files.get(PENDING_CERT_FILE)
    if pending is None:
        return []
    if PENDING_KEY_FILE in files:
        return [Remove(PENDING_CERT_FILE)]  # the renames had not started
    if certifies(pending, files.get(KEY_FILE)):
        return [Rename(PENDING_CERT_FILE, CERT_FILE)]  # the key is in place: finish
    return [Remove(PENDING_CERT_FILE)]  # cut while it was being written


def certifies(certificate_pem: bytes, key_pem: bytes | None) -> bool:
    """True if ``certificate_pem`` is a whole PEM certificate for the private key ``key_pem``."""
    if not key_pem:
        return False
    try:
        public = x509.load_pem_x509_certificate(certificate_pem).public_key()
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public.public_bytes(*spki) == key.public_key().public_bytes(*spki)


def recover_identity(flash_file: Path, layout: FlashLayout | str = "4M2M") -> list[FileStep]:
    """Finish or undo a half-done switch in the board's flash (what the firmware does at
    boot); returns the steps taken (none when there was nothing to do)."""
    steps = recovery_steps(read_flash_files(flash_file, layout))
    if steps:
        apply_flash_steps(flash_file, steps, layout)
    return steps
