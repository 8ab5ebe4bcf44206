"""Bounded before authentication: a CONNECT announcing 256 MiB, against a real Mosquitto.

Without ``max_packet_size`` Mosquitto allocates whatever a fixed header announces and buffers
what follows, before it knows who is talking; with the limit iotfleet renders, it closes the
connection after the header. The same attack runs against both, so the test shows the
difference it asserts.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iotfleet.check.raw_attacks import remaining_length
from iotfleet.model.settings import MosquittoSettings
from tests.support.local_broker import free_port, running_mosquitto

MAX_REMAINING_LENGTH = 268_435_455  # 256 MiB - 1: the largest an MQTT fixed header can say
SENT = 24 * 1024 * 1024  # what the attacker streams after the header
CHUNK = 1024 * 1024


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _pid_of(conf: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(conf).encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError("no broker process")


@contextmanager
def _broker(work: Path, limit: str) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n{limit}"
    with running_mosquitto(conf, work, [port]):
        yield port, _pid_of(work / "mosquitto.conf")


def _attack(port: int, pid: int) -> tuple[int, bool]:
    """(RSS growth in KiB while the connection is held, whether the broker closed it)."""
    before = _rss_kib(pid)
    header = bytes([0x10]) + remaining_length(MAX_REMAINING_LENGTH)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        closed = False
        try:
            sock.sendall(header)
            for _ in range(SENT // CHUNK):
                sock.sendall(b"\0" * CHUNK)
            # A closed connection reads EOF; an open one has nothing to say mid-packet.
            sock.settimeout(2)
            closed = sock.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        except TimeoutError:
            closed = False
        grown = _rss_kib(pid) - before
    return grown, closed


def test_a_connect_announcing_256_mib_is_closed_without_buffering(tmp_path: Path) -> None:
    settings = MosquittoSettings()
    (tmp_path / "limited").mkdir()
    (tmp_path / "open").mkdir()
    with _broker(tmp_path / "limited", f"max_packet_size {settings.max_packet_size}\n") as b:
        limited_growth, limited_closed = _attack(*b)
    with _broker(tmp_path / "open", "") as b:
        open_growth, open_closed = _attack(*b)
    print(f"pre-auth RSS growth: {open_growth} KiB without max_packet_size, "
          f"{limited_growth} KiB with {settings.max_packet_size}")  # fmt: skip
    assert limited_closed and limited_growth < 4096
    # The same attack without the limit: the broker holds what was sent, unauthenticated.
    assert not open_closed and open_growth > SENT // 1024 // 2


def test_heap_limit_stays_below_the_largest_packet_with_websockets() -> None:
    """Mosquitto 2.0 skips max_packet_size on websockets listeners: there the broker's own
    memory_limit must refuse a 256 MiB allocation; elsewhere it sits under MemoryHigh."""
    plain = MosquittoSettings()
    assert plain.heap_limit == plain.memory_high_mb * 1024 * 1024
    with_websockets = MosquittoSettings.model_validate(
        {
            "listeners": [
                {"port": 8883},
                {"port": 8443, "protocol": "websockets", "auth": "password"},
            ]
        }
    )
    assert with_websockets.heap_limit < MAX_REMAINING_LENGTH
    assert with_websockets.heap_limit < with_websockets.memory_high_mb * 1024 * 1024
