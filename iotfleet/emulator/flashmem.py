"""An emulated SPI NOR flash chip kept in a file (mmap): erase sets 0xFF, program clears bits."""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SECTOR = 0x1000
DEFAULT_SIZE = 4 * 1024 * 1024
_CHUNK = 1024 * 1024


class FlashRangeError(ValueError):
    """An access outside the chip or not aligned the way the chip needs."""


@dataclass
class FlashCounters:
    """What happened to the chip: tests and benchmarks prove "nothing written" with these."""

    sessions: int = 0  # serial connections served
    write_sessions: int = 0  # FLASH_BEGIN / FLASH_DEFL_BEGIN with data to write
    data_blocks: int = 0  # FLASH_DATA / FLASH_DEFL_DATA blocks received
    bytes_programmed: int = 0
    bytes_erased: int = 0
    md5_requests: int = 0
    bytes_read: int = 0
    drops: int = 0  # injected disconnections

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def valid_flash_size(size: int) -> bool:
    """ESP8266 boards carry 512 KB .. 16 MB chips, always a power of two."""
    return 512 * 1024 <= size <= 16 * 1024 * 1024 and size & (size - 1) == 0


class FlashMemory:
    """The chip's contents, persisted in ``path`` (created erased, 0600, when missing)."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = Path(path)
        self.counters = FlashCounters()
        if not self.path.exists():
            _create_erased(self.path, size or DEFAULT_SIZE)
        actual = self.path.stat().st_size
        if size is not None and actual != size:
            raise FlashRangeError(f"{self.path} holds {actual} bytes, not the {size} asked for")
        if not valid_flash_size(actual):
            raise FlashRangeError(
                f"{self.path} holds {actual} bytes: a flash image is a power of two "
                "between 512 KB and 16 MB"
            )
        self.size = actual
        self._file = open(self.path, "r+b")  # noqa: SIM115 - lives as long as the mmap
        self._map = mmap.mmap(self._file.fileno(), actual)

    def close(self) -> None:
        self._map.flush()
        self._map.close()
        self._file.close()

    def flush(self) -> None:
        self._map.flush()

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FlashRangeError(
                f"0x{offset:x}+0x{length:x} is outside the {self.size // 1024} KB flash"
            )

    def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        self.counters.bytes_read += length
        return self._map[offset : offset + length]

    def md5(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        self.counters.md5_requests += 1
        with memoryview(self._map) as view, view[offset : offset + length] as region:
            return hashlib.md5(region).digest()  # noqa: S324 - the bootloader protocol's digest

    def erase(self, offset: int, length: int) -> None:
        """Erase whole sectors covering ``offset .. offset+length``."""
        start = offset - offset % SECTOR
        end = -(-(offset + length) // SECTOR) * SECTOR
        self.check_range(start, end - start)
        if end > start:
            self._map[start:end] = b"\xff" * (end - start)
            self.counters.bytes_erased += end - start

    def program(self, offset: int, data: bytes) -> None:
        """Program ``data``: like NOR flash, only 1 -> 0 transitions happen (new = old AND data)."""
        length = len(data)
        self.check_range(offset, length)
        old = self._map[offset : offset + length]
        if old.count(0xFF) == length:  # erased already: the common case, no bit logic needed
            self._map[offset : offset + length] = data
        else:
            merged = int.from_bytes(old, "little") & int.from_bytes(data, "little")
            self._map[offset : offset + length] = merged.to_bytes(length, "little")
        self.counters.bytes_programmed += length


def _create_erased(path: Path, size: int) -> None:
    if not valid_flash_size(size):
        raise FlashRangeError(f"flash size {size} is not a power of two between 512 KB and 16 MB")
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: once flashed, the chip holds the device's private key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        erased = b"\xff" * _CHUNK
        for done in range(0, size, _CHUNK):
            handle.write(erased[: min(_CHUNK, size - done)])
