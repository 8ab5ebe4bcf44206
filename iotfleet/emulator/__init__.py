"""iotfleet's own emulator of the ESP8266 serial bootloader (ROM and flasher-stub roles).

``BoardServer`` serves one emulated board on a loopback port (``socket://127.0.0.1:PORT``) with
its flash kept in a file; ``Faults`` injects a board that vanishes mid-write, answers a wrong
MAC, or never answers. ``python -m iotfleet.emulator --listen 127.0.0.1:PORT --flash FILE --mac
MAC`` runs one until SIGTERM (that is how ``iotfleet lab up --gateways M`` starts them).
"""

from __future__ import annotations

from iotfleet.emulator.flashmem import FlashCounters, FlashMemory, FlashRangeError
from iotfleet.emulator.server import BoardServer, Faults

__all__ = ["BoardServer", "Faults", "FlashCounters", "FlashMemory", "FlashRangeError"]
