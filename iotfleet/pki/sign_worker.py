"""A signing worker: a fresh interpreter that signs leaves for its parent over two pipes.

Started by ``iotfleet.pki.sign_pool`` as ``python -I <this file>``: a new process, not a fork, so
it works the same from a gevent-patched pyinfra run (a fork of a monkey-patched process can
hang). It loads ``iotfleet.pki.leaf`` by path, alone (not the ``iotfleet.pki`` package), so it
is ready in the time ``cryptography`` takes to import.

Protocol: frames of a 4-byte big-endian length and a pickle, on stdin and stdout (the pipes
of our own two processes; nothing is written to a file, nothing secret to stderr).
- parent -> worker, first: ``(issuer key PKCS#8 DER, intermediate certificate DER, AKI key id)``;
- parent -> worker, then: ``(chunk number, [job in wire form, ...])``, any number;
- worker -> parent: ``(chunk number, [(certificate PEM, key PEM), ...])`` per chunk;
- on any error: ``(-1, "ExceptionType: message")``, then exit status 1. EOF on stdin: exit 0.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
from typing import Any

_LENGTH = struct.Struct(">I")


def encode_frame(payload: object) -> bytes:
    """One frame (length + pickle)."""
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def split_frame(buffer: bytearray) -> Any:
    """The object of the complete frame at the head of ``buffer`` (removed from it), or None."""
    if len(buffer) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer)
    end = _LENGTH.size + length
    if len(buffer) < end:
        return None
    payload = pickle.loads(bytes(buffer[_LENGTH.size : end]))  # noqa: S301 (our worker's pipe)
    del buffer[:end]
    return payload


def _read_exact(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def read_frame(fd: int) -> Any:
    """The next frame's object, None at end of input."""
    head = _read_exact(fd, _LENGTH.size)
    if head is None:
        return None
    body = _read_exact(fd, _LENGTH.unpack(head)[0])
    if body is None:
        raise EOFError("input ended inside a frame")
    return pickle.loads(body)  # noqa: S301 (our parent's pipe)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _load_leaf() -> Any:
    """``iotfleet/pki/leaf.py`` beside this file, as a module of its own."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "leaf.py")
    spec = importlib.util.spec_from_file_location("_iotfleet_pki_leaf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def serve(stdin: int, stdout: int) -> int:
    """Sign chunks until the input ends; returns the exit status."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        leaf = _load_leaf()
        header = read_frame(stdin)
        if header is None:
            return 0
        key_der, cert_der, key_id = header
        del header
        key = serialization.load_der_private_key(key_der, password=None)
        del key_der
        intermediate = x509.load_der_x509_certificate(cert_der)
        aki = x509.AuthorityKeyIdentifier(key_id, None, None)
        signer = leaf.LeafSigner(key, intermediate.subject, aki)
        while (frame := read_frame(stdin)) is not None:
            number, jobs = frame
            write_all(stdout, encode_frame((number, [signer.issue(job) for job in jobs])))
    except BrokenPipeError:
        return 1  # the parent is gone
    except Exception as exc:  # reported to the parent, which raises
        with contextlib.suppress(OSError):
            write_all(stdout, encode_frame((-1, f"{type(exc).__name__}: {exc}")))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.fileno(), sys.stdout.fileno()))
