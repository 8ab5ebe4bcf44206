"""A TLS client context from PEM bytes that never puts the private key in a file.

Python's ssl only loads certificates and keys from paths; an anonymous in-memory file
(``memfd_create``) gives it one, reachable as ``/proc/self/fd/N``, gone when closed: the key is
never in /tmp or on any disk.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("iotfleet-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def gateway_tls_context(ca_pem: bytes, certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Verify the broker against the fleet CA (and its name); present the device's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode())
    with _memory_file(certificate_pem) as cert_path, _memory_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)
    return context
