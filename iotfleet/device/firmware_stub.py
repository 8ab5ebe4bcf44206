"""A minimal, valid ESP8266 application image: the stand-in firmware for tests and the lab.

The real gateway firmware is the Arduino sketch in ``files/firmware/iotfleet-gateway/``; it needs
the Xtensa toolchain, which CI cannot reach. This image is what gets flashed instead: a "version
1" image (the format the ESP8266 ROM boots) whose one IRAM segment spins in place and carries a
marker, so ``esptool image-info`` validates it. Same input, same bytes.

    python -m iotfleet.device.firmware_stub files/firmware/iotfleet-gateway.bin
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

IMAGE_MAGIC = 0xE9
CHECKSUM_MAGIC = 0xEF
FLASH_MODE_DIO = 0x02
FLASH_SIZE_4MB_40MHZ = 0x40  # high nibble: size (4 MB), low nibble: frequency (40 MHz)
IRAM_START = 0x40100000
SPIN = bytes([0x06, 0xFF, 0xFF, 0x00])  # Xtensa "j ." (loop forever), padded to a word
MARKER = b"iotfleet reference gateway image: boots into a loop, see files/firmware/\x00"
DEFAULT_PATH = Path("files/firmware/iotfleet-gateway.bin")


def _segment(address: int, data: bytes) -> bytes:
    data += b"\x00" * (-len(data) % 4)  # segment lengths are multiples of 4
    return struct.pack("<II", address, len(data)) + data


def _checksum(data: bytes) -> int:
    value = CHECKSUM_MAGIC
    for byte in data:
        value ^= byte
    return value


def reference_firmware(extra_bytes: int = 0) -> bytes:
    """The image bytes. ``extra_bytes`` appends deterministic, code-like filler after the image,
    where real sketches carry their flash-mapped code (benchmarks flash a realistic size).
    """
    code = SPIN + MARKER
    header = struct.pack("<BBBBI", IMAGE_MAGIC, 1, FLASH_MODE_DIO, FLASH_SIZE_4MB_40MHZ, IRAM_START)
    body = header + _segment(IRAM_START, code)
    # Pad so the checksum byte is the last byte of a 16-byte line (what the ROM reads).
    body += b"\x00" * (15 - len(body) % 16)
    image = body + bytes([_checksum(code + b"\x00" * (-len(code) % 4))])
    return image + _filler(extra_bytes)


_CODE_LIKE = bytes(i & 0x3F for i in range(256))  # 6 bits of entropy per byte


def is_stand_in(image: bytes) -> bool:
    """True if ``image`` is this stand-in (it boots into a loop: no gateway runs on a board)."""
    return MARKER in image[: len(SPIN) + len(MARKER) + 64]


def _filler(size: int) -> bytes:
    """Reproducible bytes that zlib shrinks to about 75%, as it does Xtensa machine code."""
    if size <= 0:
        return b""
    return hashlib.shake_256(b"iotfleet firmware filler").digest(size).translate(_CODE_LIKE)


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else DEFAULT_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(reference_firmware())
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
