"""Flash layouts of the ESP8266 Arduino core: where the filesystem partition lives, how big.

Computed exactly the way the core's ``tools/boards.txt.py`` (``flash_map``) computes the linker
scripts' ``_FS_start``/``_FS_end``/``_FS_block``: the last 20 KB of flash (EEPROM, RF
calibration, SDK Wi-Fi settings) stay outside the filesystem; partitions under 512 KB use
4 KB blocks, bigger ones 8 KB; the end is rounded down to a whole block. So "4M2M" is
0x200000 + 0x1FA000 (253 blocks of 8192 bytes), as the core builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

RESERVED_TAIL_KB = 4 + 4 + 12  # EEPROM, RF calibration, SDK Wi-Fi settings
PAGE_SIZE = 0x100


class UnknownLayoutError(ValueError):
    """The layout name is not one of the core's flash maps."""


@dataclass(frozen=True)
class FlashLayout:
    """One flash map: chip size and the LittleFS partition (offset, size, block size)."""

    name: str
    flash_size: int
    fs_offset: int
    fs_size: int
    block_size: int

    @property
    def block_count(self) -> int:
        return self.fs_size // self.block_size

    @property
    def fs_end(self) -> int:
        return self.fs_offset + self.fs_size


def core_flash_map(flash_kb: int, fs_kb: int) -> FlashLayout:
    """The core's ``flash_map(flashsize_kb, fs_kb)`` for one chip size and filesystem size."""
    fs_end = (flash_kb - RESERVED_TAIL_KB) * 1024
    # Small chips put the filesystem right below the reserved tail, bigger ones at a fixed
    # distance from the end.
    fs_start = fs_end - fs_kb * 1024 if flash_kb <= 1024 else (flash_kb - fs_kb) * 1024
    block = 4096 if fs_kb < 512 else 8192
    fs_end = block * ((fs_end - fs_start) // block) + fs_start
    return FlashLayout(
        name=_name(flash_kb, fs_kb),
        flash_size=flash_kb * 1024,
        fs_offset=fs_start,
        fs_size=fs_end - fs_start,
        block_size=block,
    )


def _name(flash_kb: int, fs_kb: int) -> str:
    def size(kb: int) -> str:
        return f"{kb // 1024}M" if kb >= 1024 else f"{kb}K"

    fs = f"{fs_kb // 1024}M" if fs_kb >= 1024 else str(fs_kb)
    return size(flash_kb) + fs


# Every flash map the core offers with a filesystem (its boards.txt "eesz" menu).
_MAPS = [
    (512, 32), (512, 64), (512, 128),
    (1024, 64), (1024, 128), (1024, 144), (1024, 160), (1024, 192), (1024, 256), (1024, 512),
    (2048, 64), (2048, 128), (2048, 256), (2048, 512), (2048, 1024),
    (4096, 1024), (4096, 2048), (4096, 3072),
    (8192, 6144), (8192, 7168),
    (16384, 14336), (16384, 15360),
]  # fmt: skip
LAYOUTS: dict[str, FlashLayout] = {
    layout.name: layout for layout in (core_flash_map(f, s) for f, s in _MAPS)
}
DEFAULT_LAYOUT = "4M2M"


def flash_layout(name: str) -> FlashLayout:
    """The layout called ``name`` (case-insensitive, e.g. ``4M2M``); a clear error otherwise."""
    layout = LAYOUTS.get(name.strip().upper())
    if layout is None:
        known = ", ".join(LAYOUTS)
        raise UnknownLayoutError(
            f"unknown flash layout {name!r}: the ESP8266 core's layouts are {known}"
        )
    return layout
