"""Private keys: generate, serialize, load encrypted CA keys with a clear error."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotfleet.pki.errors import PassphraseError, StateError
from iotfleet.pki.passphrase import Passphrase

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(key_type: str) -> PrivateKey:
    """A new private key: "ec-p256" (default) or "rsa-2048"."""
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_type_of(key: object) -> str:
    """The key_type name of a key (public or private)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec-p256" if key.curve.name == "secp256r1" else f"ec-{key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def plain_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (leaf keys: brokers and devices must read them unattended)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


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
