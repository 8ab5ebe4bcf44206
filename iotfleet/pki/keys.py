"""Private keys: generate, serialize, load encrypted CA keys with a clear error."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotfleet.pki.errors import PassphraseError, StateError
from iotfleet.pki.leaf import generate_key, plain_key_pem
from iotfleet.pki.passphrase import Passphrase

__all__ = ["PrivateKey", "encrypted_key_pem", "generate_key", "key_type_of", "load_encrypted_key",
           "plain_key_pem"]  # fmt: skip

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def key_type_of(key: object) -> str:
    """The key_type name of a key (public or private)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec-p256" if key.curve.name == "secp256r1" else f"ec-{key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def encrypted_key_pem(key: PrivateKey, passphrase: Passphrase) -> bytes:
    """PKCS#8 PEM encrypted with the passphrase (PBES2, AES-256-CBC); `openssl pkey` reads it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.reveal()),
    )


def load_encrypted_key(path: Path, passphrase: Passphrase) -> PrivateKey:
    """Load a CA key, naming the file and where the passphrase came from on failure."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path} is missing") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.reveal())
    except (ValueError, TypeError):
        # cryptography says "Incorrect password" or "Bad decrypt": either way, the passphrase.
        raise PassphraseError(
            f"cannot decrypt {path} with the CA passphrase from the {passphrase.source}: "
            "wrong passphrase, or the key file is damaged"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise StateError(f"{path} holds an unsupported key type {type(key).__name__}")
    return key
