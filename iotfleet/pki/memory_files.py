"""Private keys handed to APIs that only take paths, without ever being in a file.

Python's ssl loads certificates and keys only from paths; an anonymous in-memory file
(``memfd_create``) gives it one, reachable as ``/proc/self/fd/N`` and gone when closed: the key
is never in /tmp, a temporary directory or on any disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def memory_file(data: bytes, *, label: str = "iotfleet-key") -> Iterator[str]:
    """A path to ``data`` that exists only in memory, for the duration of the block."""
    fd = os.memfd_create(label, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
