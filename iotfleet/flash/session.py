"""One conversation with one board through esptool's Python API (unmodified esptool 5).

Driving esptool in-process lets a single connection read the MAC, compare flash digests and
write only what differs, with iotfleet's own progress; ``esptool write-flash`` as a process
would need one connection per step. Every esptool or serial error becomes a ``FlashError``
saying what happened, in the words of a person at a flash station.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import serial
from esptool.cmds import attach_flash, detect_flash_size
from esptool.loader import (
    DEFAULT_TIMEOUT,
    ERASE_WRITE_TIMEOUT_PER_MB,
    ESPLoader,
    timeout_per_mb,
)
from esptool.util import FatalError, NotImplementedInROMError, flash_size_bytes

from iotfleet.flash.errors import FailureKind, FlashError
from iotfleet.flash.loader import QuietESP8266ROM
from iotfleet.flash.serial_urls import install as install_serial_urls

ROM_BAUD = 115200
SECONDS_PER_CONNECT_ATTEMPT = 0.75  # esptool: 5 SYNCs of 0.1 s timeout + 0.05 s pause each
# The stub unpacks a compressed block while the next one arrives; it may erase one 64 KB
# block per 32 KB buffer cycle (esptool's own per-block timeout reasoning).
_STUB_ERASE_CHUNK = 64 * 1024
_STUB_INFLATE_BUFFER = 32 * 1024

Progress = Callable[[int], None]
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Payload:
    """Bytes to write at one offset, with the compressed form computed once per content."""

    offset: int
    data: bytes = field(repr=False)  # secrets: never in a repr
    compressed: bytes | None = field(repr=False)  # None: compression does not shrink it

    @classmethod
    def of(cls, offset: int, data: bytes) -> Payload:
        packed = zlib.compress(data, 9)
        return cls(offset, data, packed if len(packed) < len(data) else None)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # noqa: S324 - what the bootloader reports

    @property
    def wire_size(self) -> int:
        return len(self.compressed if self.compressed is not None else self.data)


def is_socket_port(port: str) -> bool:
    """A raw TCP port: no DTR/RTS to reset with (an emulated board resets on connect)."""
    return port.startswith("socket://")


install_serial_urls()  # rfc2217:// without a network round trip per esptool command

STUB_GREETING_TIMEOUT = 5.0  # seconds; the real stub greets within milliseconds


class BoardSession:
    """A connected ESP8266 running esptool's flasher stub."""

    def __init__(self, esp: ESPLoader, port: str, mac: str, url: str | None = None) -> None:
        self._esp = esp
        self.port = port  # as the inventory names it, for messages
        self.url = url or port  # what esptool opened
        self.mac = mac
        self.flash_size = 0
        self._last_compressed: bool | None = None

    @classmethod
    def open(
        cls, url: str, *, baud: int, connect_attempts: int, label: str | None = None
    ) -> BoardSession:
        """Open ``url``, sync with the ROM, read the MAC, start the stub, attach the flash.

        ``label`` names the port in messages when ``url`` is a relay to it.
        """
        port = label or url
        try:
            rom = QuietESP8266ROM(url, ROM_BAUD)
        except FatalError as exc:
            raise FlashError(
                f"cannot open port {port}: it does not exist or another program holds it "
                f"({_first_line(exc)})",
                "port",
            ) from None
        except (serial.SerialException, OSError) as exc:
            raise FlashError(f"cannot open port {port}: {exc}", "port") from None
        try:
            try:
                rom.connect("default-reset", connect_attempts)
            except FatalError as exc:
                waited = connect_attempts * SECONDS_PER_CONNECT_ATTEMPT
                raise FlashError(
                    f"no ESP8266 bootloader answers on {port} (timed out after about "
                    f"{waited:.0f} s, {connect_attempts} attempts): is the board connected and "
                    f"in download mode? ({_first_line(exc)})",
                    "no-answer",
                ) from None
            except (serial.SerialException, OSError) as exc:
                raise FlashError(
                    f"{port} closed the connection while connecting ({exc}): the port is busy "
                    "(another flasher is connected) or the board went away",
                    "busy",
                ) from None
            mac = _mac_text(_call(port, "read the MAC", rom.read_mac))
            session = cls(rom, port, mac, url)
            session._start_stub(baud)
            return session
        except BaseException:
            _close_port(rom)
            raise

    def _start_stub(self, baud: int) -> None:
        # esptool waits for the stub's "OHAI" with the port's own timeout, which is none on
        # socket:// ports: a board whose stub never starts would hang the rollout for good.
        self._esp._port.timeout = STUB_GREETING_TIMEOUT
        esp = _call(self.port, "start the flasher stub", self._esp.run_stub)
        self._esp = esp
        if baud > ROM_BAUD:
            _call(self.port, f"switch to {baud} baud", esp.change_baud, baud)
        _call(self.port, "attach the SPI flash", attach_flash, esp)
        size_name = _call(self.port, "read the flash size", detect_flash_size, esp)
        if size_name is None:
            raise FlashError(f"the flash chip on {self.port} reports an unknown size", "chip")
        self.flash_size = flash_size_bytes(size_name)
        _call(self.port, "set flash parameters", esp.flash_set_parameters, self.flash_size)

    def md5(self, offset: int, length: int) -> str:
        """The MD5 (hex) of ``length`` bytes of flash at ``offset``, computed on the board."""
        digest = _call(self.port, f"hash 0x{offset:x}", self._esp.flash_md5sum, offset, length)
        return str(digest)

    def write(self, payload: Payload, progress: Progress | None = None) -> int:
        """Write ``payload`` (compressed when that helps); returns the bytes sent."""
        esp = self._esp
        what = f"write at 0x{payload.offset:x}"
        block_size = esp.FLASH_WRITE_SIZE
        sent = 0
        if payload.compressed is not None:
            wire = payload.compressed
            inflater = zlib.decompressobj()
            _call(
                self.port, what, esp.flash_defl_begin, len(payload.data), len(wire), payload.offset
            )
            for seq, start in enumerate(range(0, len(wire), block_size)):
                block = wire[start : start + block_size]
                # Time the stub may need for this block: what it unpacks to, plus erasing.
                unpacked = len(inflater.decompress(block))
                erases = unpacked // _STUB_INFLATE_BUFFER + 1
                timeout = timeout_per_mb(
                    ERASE_WRITE_TIMEOUT_PER_MB, unpacked + erases * _STUB_ERASE_CHUNK
                )
                _call(self.port, what, esp.flash_defl_block, block, seq, timeout=timeout)
                sent += len(block)
                if progress is not None:
                    progress(len(block))
            self._last_compressed = True
        else:
            data = payload.data
            _call(self.port, what, esp.flash_begin, len(data), payload.offset)
            for seq, start in enumerate(range(0, len(data), block_size)):
                block = data[start : start + block_size]
                padded = block + b"\xff" * (block_size - len(block))
                _call(self.port, what, esp.flash_block, padded, seq, timeout=DEFAULT_TIMEOUT)
                sent += len(block)
                if progress is not None:
                    progress(len(block))
            self._last_compressed = False
        return sent

    def finish_writes(self) -> None:
        """Wait until the stub has really written the last block (it acknowledges early)."""
        if self._last_compressed is None:
            return
        end = self._esp.flash_defl_finish if self._last_compressed else self._esp.flash_finish
        _call(self.port, "finish writing", end, reboot=False)
        self._last_compressed = None

    def close(self, *, reset: bool = True) -> None:
        """Reset the board into its new firmware (serial ports) and release the port."""
        if reset and not is_socket_port(self.url):
            # The flash is written and verified; a missed reset is not a failure.
            with contextlib.suppress(FatalError, serial.SerialException, OSError):
                self._esp.hard_reset()
        _close_port(self._esp)


def _call(port: str, action: str, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one esptool step; its failures become FlashErrors naming the port and the step."""
    try:
        return function(*args, **kwargs)
    except (serial.SerialException, OSError) as exc:
        raise FlashError(
            f"lost the board on {port} during '{action}': {exc}", "disconnected"
        ) from None
    except NotImplementedInROMError as exc:
        raise FlashError(f"{port}: '{action}' is not possible: {exc}", "chip") from None
    except FatalError as exc:
        text = _first_line(exc)
        kind: FailureKind = (
            "disconnected" if "No serial data" in text or "stopped" in text else "failed"
        )
        raise FlashError(f"{port}: could not {action}: {text}", kind) from None


def _close_port(esp: ESPLoader) -> None:
    port = esp._port
    try:
        if str(port.port or "").startswith("socket://"):
            # pyserial's socket close() sleeps 0.3 s "for quick reconnects"; the emulator
            # does not need it, so the socket is shut down here and the wait skipped.
            raw = getattr(port, "_socket", None)
            if raw is not None:
                raw.close()
                port._socket = None
            port.is_open = False
            return
        port.close()
    except (serial.SerialException, OSError):
        pass


def _mac_text(octets: object) -> str:
    if not isinstance(octets, tuple | list) or len(octets) != 6:
        raise FlashError(f"the board answered an unreadable MAC ({octets!r})", "chip")
    return ":".join(f"{int(o):02x}" for o in octets)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
