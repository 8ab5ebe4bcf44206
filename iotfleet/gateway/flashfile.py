"""Read a gateway's secrets back out of its flash, the way the firmware does at boot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from iotfleet.device.contract import Bundle, ContractError
from iotfleet.device.layouts import FlashLayout, flash_layout
from iotfleet.device.littlefs_image import (
    FileStep,
    FilesystemError,
    littlefs_steps,
    read_littlefs_image,
    staged_writes,
)


class GatewayError(RuntimeError):
    """The gateway cannot start: no readable contract in flash, or no broker to reach."""


def read_partition(flash_file: Path, layout: FlashLayout) -> bytes:
    """The filesystem partition's bytes from a flash image file (an emulated board's flash)."""
    try:
        with open(flash_file, "rb") as handle:
            size = handle.seek(0, 2)
            if size < layout.fs_end:
                raise GatewayError(
                    f"{flash_file} holds {size // 1024} KB of flash; layout {layout.name} puts "
                    f"the filesystem up to 0x{layout.fs_end:x}"
                )
            handle.seek(layout.fs_offset)
            return handle.read(layout.fs_size)
    except OSError as exc:
        raise GatewayError(f"cannot read {flash_file}: {exc.strerror}") from None


def read_flash_files(flash_file: Path, layout: FlashLayout | str = "4M2M") -> dict[str, bytes]:
    """Every file of the board's LittleFS (mounted with the core's geometry, never formatted)."""
    chosen = flash_layout(layout) if isinstance(layout, str) else layout
    try:
        return read_littlefs_image(read_partition(flash_file, chosen), chosen)
    except FilesystemError as exc:
        raise GatewayError(f"{flash_file}: {exc}") from None


def read_bundle(flash_file: Path, layout: FlashLayout | str = "4M2M") -> Bundle:
    """The device's configuration and secrets from its flash (``ContractError`` -> GatewayError)."""
    files = read_flash_files(flash_file, layout)
    try:
        return Bundle.from_files(files)
    except ContractError as exc:
        raise GatewayError(f"{flash_file}: the flashed files break the contract: {exc}") from None


def apply_flash_steps(
    flash_file: Path, steps: Sequence[FileStep], layout: FlashLayout | str = "4M2M"
) -> int:
    """Apply file operations to the board's LittleFS one at a time, each written to the flash
    (only the blocks that changed, in place: the emulated chip maps this file, so it sees the
    same bytes) and synced before the next begins, so the flash after a crash between two steps
    holds exactly the steps done. Returns how many blocks were written."""
    chosen = flash_layout(layout) if isinstance(layout, str) else layout
    before = read_partition(flash_file, chosen)
    size = chosen.block_size
    written = 0
    fd = os.open(flash_file, os.O_WRONLY)
    try:
        for after in littlefs_steps(before, chosen, steps):
            for offset in range(0, len(after), size):
                block = after[offset : offset + size]
                if block != before[offset : offset + size]:
                    os.pwrite(fd, block, chosen.fs_offset + offset)
                    written += 1
            os.fsync(fd)
            before = after
    except FilesystemError as exc:
        raise GatewayError(f"{flash_file}: {exc}") from None
    finally:
        os.close(fd)
    return written


def write_flash_files(
    flash_file: Path, files: dict[str, bytes], layout: FlashLayout | str = "4M2M"
) -> int:
    """Store ``files`` in the board's LittleFS like the firmware does (each written as
    ``<name>.new``, then renamed over ``<name>``). Returns how many blocks were written."""
    return apply_flash_steps(flash_file, staged_writes(files), layout)
