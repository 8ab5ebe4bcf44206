"""A TLS client context from PEM bytes that never puts the private key in a file."""

from __future__ import annotations

import ssl

from iotfleet.pki.memory_files import memory_file


def gateway_tls_context(ca_pem: bytes, certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Verify the broker against the fleet CA (and its name); present the device's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode())
    with memory_file(certificate_pem) as cert_path, memory_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)
    return context
