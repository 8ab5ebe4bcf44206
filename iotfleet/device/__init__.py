"""Per-device secrets for ESP8266 gateways: the file contract, LittleFS images, flash layouts.

- ``build_device_image(ctx, device_id, ...) -> DeviceImage``: the filesystem partition to flash.
- ``device_bundle(ctx, device_id, ...) -> Bundle``: the contract's content (``Bundle.files()``).
- ``flash_layout(name) -> FlashLayout``: the ESP8266 core's flash maps (4M2M, 4M1M, ...).
- ``build_littlefs_image`` / ``read_littlefs_image``: LittleFS with the core's exact geometry.
- ``reference_firmware()``: the minimal valid app image flashed where no real build exists.
"""

from __future__ import annotations

from iotfleet.device.contract import Bundle, ContractError, GatewayConfig, Topics
from iotfleet.device.firmware_stub import reference_firmware
from iotfleet.device.image import (
    DeviceImage,
    DeviceImageError,
    board_layout,
    build_device_image,
    device_bundle,
    find_board,
)
from iotfleet.device.layouts import (
    DEFAULT_LAYOUT,
    LAYOUTS,
    FlashLayout,
    UnknownLayoutError,
    flash_layout,
)
from iotfleet.device.littlefs_image import (
    FilesystemError,
    build_littlefs_image,
    core_geometry,
    read_littlefs_image,
)

__all__ = [
    "DEFAULT_LAYOUT",
    "LAYOUTS",
    "Bundle",
    "ContractError",
    "DeviceImage",
    "DeviceImageError",
    "FilesystemError",
    "FlashLayout",
    "GatewayConfig",
    "Topics",
    "UnknownLayoutError",
    "board_layout",
    "build_device_image",
    "build_littlefs_image",
    "core_geometry",
    "device_bundle",
    "find_board",
    "flash_layout",
    "read_littlefs_image",
    "reference_firmware",
]
