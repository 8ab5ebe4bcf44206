"""The ESP8266 serial bootloader, ROM and flasher-stub roles, as a transport-free state machine.

``Esp8266.handle(packet)`` takes one decoded request and returns the frames to send back. What
is emulated is what esptool 5 uses on an ESP8266: SYNC, registers (chip magic, MAC in the OTP,
UART divider, the SPI controller for JEDEC id and SFDP), RAM download (the stub upload ends with
"OHAI"), plain and compressed flash writes, SPI_FLASH_MD5, erase, baud-rate change. The ROM role
refuses what the real ESP8266 ROM cannot do (compression, MD5, reads, erase-all), so esptool's
``--no-stub`` path is exercised honestly.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import Enum

from iotfleet.emulator.flashmem import SECTOR, FlashMemory, FlashRangeError

# Opcodes (esptool's ESPLoader.ESP_CMDS).
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
MEM_BEGIN = 0x05
MEM_END = 0x06
MEM_DATA = 0x07
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
CHANGE_BAUDRATE = 0x0F
FLASH_DEFL_BEGIN = 0x10
FLASH_DEFL_DATA = 0x11
FLASH_DEFL_END = 0x12
SPI_FLASH_MD5 = 0x13
ERASE_FLASH = 0xD0
ERASE_REGION = 0xD1
READ_FLASH = 0xD2
RUN_USER_CODE = 0xD3

ROM_COMMANDS = frozenset(
    {FLASH_BEGIN, FLASH_DATA, FLASH_END, MEM_BEGIN, MEM_END, MEM_DATA, SYNC, WRITE_REG, READ_REG}
)
STUB_COMMANDS = ROM_COMMANDS | {
    SPI_SET_PARAMS,
    SPI_ATTACH,
    CHANGE_BAUDRATE,
    FLASH_DEFL_BEGIN,
    FLASH_DEFL_DATA,
    FLASH_DEFL_END,
    SPI_FLASH_MD5,
    ERASE_FLASH,
    ERASE_REGION,
    READ_FLASH,
    RUN_USER_CODE,
}
DATA_COMMANDS = frozenset({FLASH_DATA, FLASH_DEFL_DATA})

# ROM error codes (second status byte), as esptool names them.
ERR_INVALID_MESSAGE = 0x05
ERR_FAILED_TO_ACT = 0x06
ERR_INVALID_CRC = 0x07
ERR_FLASH_WRITE = 0x08
ERR_FLASH_READ = 0x09
ERR_DEFLATE = 0x0B

CHECKSUM_MAGIC = 0xEF
ROM_SYNC_VALUE = 0x20120707  # any non-zero value tells esptool it talks to the ROM
SYNC_REPLIES = 8

# Registers esptool reads.
CHIP_MAGIC_REG = 0x40001000
ESP8266_MAGIC = 0xFFF0C101
OTP_MAC0 = 0x3FF00050
OTP_MAC1 = 0x3FF00054
OTP_MAC2 = 0x3FF00058
OTP_MAC3 = 0x3FF0005C
UART_CLKDIV_REG = 0x60000014
APB_CLOCK = 52_000_000  # 26 MHz crystal; esptool derives the crystal from baud * divider / 2
SPI_BASE = 0x60000200
SPI_CMD = SPI_BASE + 0x00
SPI_ADDR = SPI_BASE + 0x04
SPI_USR = SPI_BASE + 0x1C
SPI_USR1 = SPI_BASE + 0x20
SPI_USR2 = SPI_BASE + 0x24
SPI_W0 = SPI_BASE + 0x40
SPI_CMD_USR = 1 << 18

WINBOND = 0xEF
# A minimal SFDP table: the signature esptool checks, and Winbond's id where XMC's would be.
SFDP_TABLE = (
    b"SFDP\x06\x01\x01\xff"
    + b"\x00\x06\x01\x10\x30\x00\x00\xff"
    + bytes([WINBOND])
    + (b"\x00\x01\x03\x60\x00\x00\xff")
)
OUI_BY_SELECTOR = {(0x18, 0xFE, 0x34): 0, (0xAC, 0xD0, 0x74): 1}

ROM_BAUD = 115200


class Role(Enum):
    ROM = "rom"
    STUB = "stub"
    APP = "app"  # left the bootloader: silent until the next connection (a reset)


@dataclass
class _Write:
    """A flash write in progress (FLASH_BEGIN or FLASH_DEFL_BEGIN)."""

    offset: int
    size: int
    block_size: int
    blocks: int
    compressed: bool
    next_seq: int = 0
    written: int = 0
    inflater: zlib._Decompress | None = None


@dataclass
class Reply:
    """What the board sends back for one request."""

    frames: list[bytes] = field(default_factory=list)
    read_flash: tuple[int, int, int, int] | None = None  # offset, length, block, in-flight


def checksum(data: bytes) -> int:
    """The ROM's checksum of a data block: 0xEF xor every byte."""
    # Fold the block onto itself as one big integer: C-speed, unlike a loop over 16 KB.
    value = int.from_bytes(data, "little")
    width = len(data)
    while width > 1:
        half = (width + 1) // 2
        value = (value & ((1 << (8 * half)) - 1)) ^ (value >> (8 * half))
        width = half
    return (value & 0xFF) ^ CHECKSUM_MAGIC


def jedec_id(flash_size: int) -> int:
    """RDID answer of a Winbond chip of ``flash_size`` bytes (e.g. 0x1640EF for 4 MB)."""
    return WINBOND | (0x40 << 8) | ((flash_size.bit_length() - 1) << 16)


def mac_registers(mac: bytes) -> dict[int, int]:
    """OTP words from which esptool's ``read_mac`` rebuilds ``mac``."""
    oui = tuple(mac[:3])
    selector = OUI_BY_SELECTOR.get(oui)  # type: ignore[arg-type]
    mac1 = ((selector or 0) << 16) | (mac[3] << 8) | mac[4]
    mac3 = 0 if selector is not None else (mac[0] << 16) | (mac[1] << 8) | mac[2]
    return {OTP_MAC0: mac[5] << 24, OTP_MAC1: mac1, OTP_MAC2: 0, OTP_MAC3: mac3}


def rom_erase_bytes(offset: int, size: int) -> int:
    """How much the ESP8266 ROM really erases when asked for ``size`` bytes at ``offset``.

    The ROM counts the sectors up to the next 64 KB block twice; esptool's
    ``ESP8266ROM.get_erase_size`` asks for less to compensate, so emulate the bug to match.
    """
    sectors = -(-size // SECTOR)
    head = 16 - (offset // SECTOR) % 16
    return (sectors + min(sectors, head)) * SECTOR


class Esp8266:
    """One board's bootloader state; the flash outlives connections, the rest is per reset."""

    def __init__(self, flash: FlashMemory, mac: bytes, *, stub_starts: bool = True) -> None:
        if len(mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        self.flash = flash
        self.mac = mac
        self.stub_starts = stub_starts  # False: a fault, the uploaded stub never greets
        self.reset()

    def reset(self) -> None:
        """Power-on in download mode: what every new serial connection sees."""
        self.role = Role.ROM
        self.baud = ROM_BAUD
        self.registers: dict[int, int] = {CHIP_MAGIC_REG: ESP8266_MAGIC, **mac_registers(self.mac)}
        self._write: _Write | None = None
        self._ram_loaded = 0
        # Fault injection: bytes the board still programs before it loses power (None: all).
        self.program_budget: int | None = None

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, packet: bytes) -> Reply:
        """Answer one request frame (an invalid one gets the ROM's "invalid message")."""
        if self.role is Role.APP or len(packet) < 8 or packet[0] != 0:
            return Reply()  # the app ignores the loader protocol; bad frames are noise
        _, op, length, chk = struct.unpack_from("<BBHI", packet)
        data = packet[8:]
        if len(data) != length:
            return self._fail(op, ERR_INVALID_MESSAGE)
        allowed = ROM_COMMANDS if self.role is Role.ROM else STUB_COMMANDS
        if op not in allowed:
            return self._fail(op, ERR_INVALID_MESSAGE)
        if op == SYNC:
            value = ROM_SYNC_VALUE if self.role is Role.ROM else 0
            return Reply([self._response(op, value)] * SYNC_REPLIES)
        try:
            return self._HANDLERS[op](self, op, data, chk)
        except (struct.error, FlashRangeError):
            return self._fail(op, ERR_FAILED_TO_ACT)

    def _response(self, op: int, value: int = 0, body: bytes = b"", error: int = 0) -> bytes:
        status = bytes([1, error]) if error else b"\x00\x00"
        payload = body + status
        return struct.pack("<BBHI", 1, op, len(payload), value) + payload

    def _ok(self, op: int, value: int = 0, body: bytes = b"") -> Reply:
        return Reply([self._response(op, value, body)])

    def _fail(self, op: int, error: int) -> Reply:
        return Reply([self._response(op, error=error)])

    # -- registers -----------------------------------------------------------------------------

    def read_register(self, address: int) -> int:
        if address == UART_CLKDIV_REG:
            return APB_CLOCK // self.baud
        return self.registers.get(address, 0)

    def _read_reg(self, op: int, data: bytes, _chk: int) -> Reply:
        (address,) = struct.unpack_from("<I", data)
        return self._ok(op, self.read_register(address))

    def _write_reg(self, op: int, data: bytes, _chk: int) -> Reply:
        if len(data) % 16:
            return self._fail(op, ERR_INVALID_MESSAGE)
        for address, value, mask, _delay in struct.iter_unpack("<IIII", data):
            old = self.registers.get(address, 0)
            self.registers[address] = (old & ~mask) | (value & mask)
            if address == SPI_CMD and value & SPI_CMD_USR:
                self._run_spi_command()
        return self._ok(op)

    def _run_spi_command(self) -> None:
        """Execute the SPI "user command" esptool set up in the SPI registers."""
        command = self.registers.get(SPI_USR2, 0) & 0xFF
        miso_bits = ((self.registers.get(SPI_USR1, 0) >> 8) & 0x1FF) + 1
        result = 0
        if command == 0x9F:  # RDID
            result = jedec_id(self.flash.size)
        elif command == 0x5A:  # RDSFDP, 24-bit address left-aligned in SPI_ADDR
            address = self.registers.get(SPI_ADDR, 0) >> 8
            chunk = SFDP_TABLE[address : address + 4].ljust(4, b"\xff")
            result = int.from_bytes(chunk, "little")
        if miso_bits < 32:
            result &= (1 << miso_bits) - 1
        if command in (0x9F, 0x5A, 0x05, 0x35, 0x15):
            self.registers[SPI_W0] = result
        self.registers[SPI_CMD] = 0  # done at once

    # -- RAM download (the stub upload) --------------------------------------------------------

    def _mem_begin(self, op: int, data: bytes, _chk: int) -> Reply:
        struct.unpack_from("<IIII", data)
        return self._ok(op)

    def _mem_data(self, op: int, data: bytes, chk: int) -> Reply:
        length, _seq, _, _ = struct.unpack_from("<IIII", data)
        block = data[16:]
        if len(block) != length or checksum(block) != chk & 0xFF:
            return self._fail(op, ERR_INVALID_CRC)
        self._ram_loaded += length
        return self._ok(op)

    def _mem_end(self, op: int, data: bytes, _chk: int) -> Reply:
        no_entry, _entry = struct.unpack_from("<II", data)
        reply = self._ok(op)
        if not no_entry:
            if self.role is Role.ROM and self._ram_loaded and not self.stub_starts:
                self.role = Role.APP  # the stub crashed: nothing answers until a reset
            elif self.role is Role.ROM and self._ram_loaded:
                # We cannot run Xtensa code; what esptool uploads and starts is its flasher
                # stub, which greets with a raw "OHAI" frame.
                self.role = Role.STUB
                reply.frames.append(b"OHAI")
            else:
                self.role = Role.APP
        return reply

    # -- flash writes --------------------------------------------------------------------------

    def _flash_begin(self, op: int, data: bytes, _chk: int) -> Reply:
        size, blocks, block_size, offset = struct.unpack_from("<IIII", data)
        compressed = op == FLASH_DEFL_BEGIN
        if self.role is Role.ROM:
            erase = rom_erase_bytes(offset, size) if size else 0
            self.flash.check_range(offset, size)
            if erase:
                start = offset - offset % SECTOR
                self.flash.erase(start, min(erase, self.flash.size - start))
            declared = blocks * block_size
        else:
            # The stub gets the exact byte count and erases as it writes.
            self.flash.check_range(offset, size)
            if size:
                self.flash.erase(offset, size)
            declared = size
        self._write = _Write(
            offset=offset,
            size=declared,
            block_size=block_size,
            blocks=blocks,
            compressed=compressed,
            inflater=zlib.decompressobj() if compressed else None,
        )
        if size:
            self.flash.counters.write_sessions += 1
        return self._ok(op)

    def _flash_data(self, op: int, data: bytes, chk: int) -> Reply:
        write = self._write
        length, seq, _, _ = struct.unpack_from("<IIII", data)
        block = data[16:]
        if write is None or write.compressed != (op == FLASH_DEFL_DATA):
            return self._fail(op, ERR_FAILED_TO_ACT)
        if len(block) != length or checksum(block) != chk & 0xFF:
            return self._fail(op, ERR_INVALID_CRC)
        if seq != write.next_seq:
            return self._fail(op, ERR_FAILED_TO_ACT)
        self.flash.counters.data_blocks += 1
        if write.inflater is not None:
            try:
                block = write.inflater.decompress(block)
            except zlib.error:
                return self._fail(op, ERR_DEFLATE)
            if write.written + len(block) > write.size:
                return self._fail(op, ERR_DEFLATE)
        else:
            block = block[: write.size - write.written]  # the last block is padded with 0xFF
        if self.program_budget is not None:
            block = block[: self.program_budget]
            self.program_budget -= len(block)
        self.flash.program(write.offset + write.written, block)
        if self.program_budget == 0:
            return Reply()  # power lost in the middle of the block: no answer, ever
        write.written += len(block)
        write.next_seq += 1
        return self._ok(op)

    def _flash_end(self, op: int, data: bytes, _chk: int) -> Reply:
        (stay,) = struct.unpack_from("<I", data)
        self._write = None
        self.flash.flush()
        reply = self._ok(op)
        if not stay:
            self.role = Role.APP  # "run user code" / reboot: the board leaves the loader
        return reply

    # -- stub-only services --------------------------------------------------------------------

    def _md5(self, op: int, data: bytes, _chk: int) -> Reply:
        address, size, _, _ = struct.unpack_from("<IIII", data)
        return self._ok(op, body=self.flash.md5(address, size))

    def _erase_flash(self, op: int, _data: bytes, _chk: int) -> Reply:
        self.flash.erase(0, self.flash.size)
        return self._ok(op)

    def _erase_region(self, op: int, data: bytes, _chk: int) -> Reply:
        offset, size = struct.unpack_from("<II", data)
        if offset % SECTOR or size % SECTOR:
            return self._fail(op, ERR_FAILED_TO_ACT)
        self.flash.erase(offset, size)
        return self._ok(op)

    def _read_flash(self, op: int, data: bytes, _chk: int) -> Reply:
        offset, length, block, in_flight = struct.unpack_from("<IIII", data)
        self.flash.check_range(offset, length)
        if block == 0 or in_flight == 0:
            return self._fail(op, ERR_INVALID_MESSAGE)
        reply = self._ok(op)
        reply.read_flash = (offset, length, block, in_flight)
        return reply

    def _change_baud(self, op: int, data: bytes, _chk: int) -> Reply:
        new, _old = struct.unpack_from("<II", data)
        if new <= 0:
            return self._fail(op, ERR_INVALID_MESSAGE)
        reply = self._ok(op)
        self.baud = new  # after the answer, which still goes out at the old speed
        return reply

    def _accept(self, op: int, _data: bytes, _chk: int) -> Reply:
        return self._ok(op)

    def _run_user_code(self, _op: int, _data: bytes, _chk: int) -> Reply:
        self.role = Role.APP
        return Reply()  # no answer: the stub jumps into the app

    _HANDLERS = {
        READ_REG: _read_reg,
        WRITE_REG: _write_reg,
        MEM_BEGIN: _mem_begin,
        MEM_DATA: _mem_data,
        MEM_END: _mem_end,
        FLASH_BEGIN: _flash_begin,
        FLASH_DATA: _flash_data,
        FLASH_END: _flash_end,
        FLASH_DEFL_BEGIN: _flash_begin,
        FLASH_DEFL_DATA: _flash_data,
        FLASH_DEFL_END: _flash_end,
        SPI_FLASH_MD5: _md5,
        ERASE_FLASH: _erase_flash,
        ERASE_REGION: _erase_region,
        READ_FLASH: _read_flash,
        CHANGE_BAUDRATE: _change_baud,
        SPI_SET_PARAMS: _accept,
        SPI_ATTACH: _accept,
        RUN_USER_CODE: _run_user_code,
    }
