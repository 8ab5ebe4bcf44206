"""Attacks below the MQTT client library, as an attacker makes them: raw sockets over TLS.

* an oversized CONNECT: a fixed header announcing the largest remaining length MQTT can
  encode (256 MiB) and a few bytes, before any authentication; a broker that waits for the
  rest has already reserved (or will buffer) what the header announced;
* a burst of new TCP connections from one source, to see whether the broker's firewall
  limits the rate at which one address may try passwords.

Every attack is bounded in count and time and goes only to the address the caller names (the
inventory's own brokers).
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from iotfleet.check.tls_context import client_context

MAX_REMAINING_LENGTH = 268_435_455  # 0xFF 0xFF 0xFF 0x7F: 256 MiB - 1, MQTT's largest
CONNECT = 0x10
# What follows the fixed header: the start of a CONNECT's variable header (protocol name
# "MQTT", level 5, flags username+password+clean start, keepalive 60); the rest never comes.
CONNECT_START = b"\x00\x04MQTT\x05\xc2\x00\x3c"


def remaining_length(value: int) -> bytes:
    """MQTT's variable byte integer (1 to 4 bytes)."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {value} out of range")
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def oversized_connect(announced: int = MAX_REMAINING_LENGTH) -> bytes:
    """A CONNECT fixed header announcing ``announced`` bytes, and only the first few."""
    return bytes([CONNECT]) + remaining_length(announced) + CONNECT_START


def websocket_frame(payload: bytes) -> bytes:
    """One masked binary WebSocket frame (RFC 6455; clients must mask), payload < 64 KiB."""
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x82]) + (
        bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack("!H", size)
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass(frozen=True)
class OversizeOutcome:
    closed: bool  # the broker closed (or reset) the connection
    seconds: float  # after the header was sent, until it closed (or until we gave up)
    detail: str  # how it ended, in words
    stage: str = "sent"  # "network" / "tls" / "websocket": the attack never got to send


def send_oversized_connect(
    host: str,
    port: int,
    ca_pem: bytes,
    *,
    certificate_pem: bytes | None = None,
    private_key_pem: bytes | None = None,
    websockets: bool = False,
    wait: float = 3.0,
    timeout: float = 5.0,
) -> OversizeOutcome:
    """Open TLS (with a client certificate if given), send an oversized CONNECT, and wait up to
    ``wait`` seconds for the broker to close the connection."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return OversizeOutcome(False, 0.0, f"connection failed: {exc}", "network")
    context = client_context(
        ca_pem, certificate_pem=certificate_pem, private_key_pem=private_key_pem
    )
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            if websockets:
                problem = _websocket_upgrade(tls, host, port)
                if problem:
                    return OversizeOutcome(False, 0.0, problem, "websocket")
            packet = oversized_connect()
            tls.sendall(websocket_frame(packet) if websockets else packet)
            return _wait_for_close(tls, wait)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return OversizeOutcome(False, 0.0, f"TLS handshake failed: {exc}", "tls")
    except OSError as exc:
        return OversizeOutcome(False, 0.0, f"connection failed: {exc}", "network")


def _websocket_upgrade(tls: ssl.SSLSocket, host: str, port: int) -> str | None:
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        (
            f"GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer and len(answer) < 8192:
        chunk = tls.recv(4096)
        if not chunk:
            break
        answer += chunk
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 101 " not in f"{status} ":
        return f"the WebSocket upgrade was refused ({status or 'connection closed'})"
    return None


def _wait_for_close(tls: ssl.SSLSocket, wait: float) -> OversizeOutcome:
    start = time.monotonic()
    answered = b""
    while True:
        left = wait - (time.monotonic() - start)
        if left <= 0:
            return OversizeOutcome(False, wait, "the connection stayed open, the broker reading")
        tls.settimeout(left)
        try:
            chunk = tls.recv(4096)
        except TimeoutError:
            continue
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            return OversizeOutcome(True, time.monotonic() - start, f"closed ({exc})")
        if not chunk:
            how = "closed" + (f" after answering {answered[:8].hex()}" if answered else "")
            return OversizeOutcome(True, time.monotonic() - start, how)
        answered += chunk  # e.g. an MQTT 5 DISCONNECT 0x95 (packet too large) before closing


def connection_burst(host: str, port: int, count: int, wait: float = 3.0) -> int:
    """Open ``count`` new TCP connections to ``host:port`` at once (handshake only: nothing is
    sent) and return how many were answered within ``wait`` seconds. All are reset at once."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    selector = selectors.DefaultSelector()
    sockets: list[socket.socket] = []
    answered = 0
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            # Reset on close: no TIME_WAIT, no half-open connections left on the broker.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sockets.append(sock)
            sock.connect_ex(address)
            selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + wait
        pending = len(sockets)
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                selector.unregister(ready)
                pending -= 1
                if ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    answered += 1
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    return answered


def source_address(host: str, port: int) -> str:
    """The address this machine sends from to reach ``host:port`` (routing only: a UDP socket
    connected without sending anything)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return str(probe.getsockname()[0])


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether one new TCP connection to ``host:port`` is answered within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return False
    return True
