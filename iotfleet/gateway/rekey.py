"""A gateway's side of a re-key over the air: a new key made on the board, and its CSR.

The key never leaves the gateway: it is kept in flash as ``/client.key.new`` (beside the key in
use) until a certificate for it arrives on the certificate topic; only the CSR, signed with the
new key (proof of possession), goes to the CA over the gateway's own CSR topic.
"""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iotfleet.device.contract import CsrMessage, RekeyRequest


def new_key_pem(key_type: str) -> bytes:
    """A fresh private key, unencrypted PKCS#8 PEM (the format of ``/client.key``)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(device_id: str, key_pem: bytes) -> bytes:
    """A PKCS#10 request for ``CN=<device id>``, signed with the key (SHA-256)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def csr_message(request: RekeyRequest, key_pem: bytes) -> bytes:
    """The answer to ``request`` on the gateway's CSR topic."""
    return CsrMessage(
        device=request.device,
        request=request.request,
        csr=csr_pem(request.device, key_pem).decode(),
    ).to_payload()


def rekey_state(request_id: str) -> bytes:
    """``/rekey.json``: which request the gateway answered last (no secret in it)."""
    return json.dumps({"request": request_id}).encode()


def answered_request(content: bytes | None) -> str | None:
    """The request id ``/rekey.json`` names, if it is readable."""
    if not content:
        return None
    try:
        value = json.loads(content).get("request")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
