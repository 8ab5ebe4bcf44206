"""TLS client contexts from PEM bytes: the fleet CA to trust, an optional client identity."""

from __future__ import annotations

import ssl
import warnings

from iotfleet.pki.memory_files import memory_file


def client_context(
    ca_pem: bytes,
    *,
    certificate_pem: bytes | None = None,
    private_key_pem: bytes | None = None,
    minimum: ssl.TLSVersion | None = ssl.TLSVersion.TLSv1_2,
    maximum: ssl.TLSVersion | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_pem`` (and its name).

    ``maximum``/``minimum`` let a probe offer only old protocols: to really offer TLS 1.0/1.1
    the security level must drop to 0, or OpenSSL 3 silently refuses to send them.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode())
    if maximum is not None and maximum < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("ALL:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    elif minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        with warnings.catch_warnings():  # old versions are deprecated: offering them is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.maximum_version = maximum
    if certificate_pem is not None and private_key_pem is not None:
        load_identity(context, certificate_pem, private_key_pem)
    return context


def load_identity(context: ssl.SSLContext, certificate_pem: bytes, private_key_pem: bytes) -> None:
    """Load a client certificate and key; ssl wants paths, so they are memory files (the key
    never touches a disk or a temporary directory)."""
    with memory_file(certificate_pem) as cert_path, memory_file(private_key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)
