"""One emulated board on a loopback TCP port: esptool reaches it as ``socket://127.0.0.1:PORT``.

Clients are served one after the other, each connection being a fresh reset into the ROM
bootloader (over a socket esptool cannot toggle DTR/RTS, so the board "resets" on connect). A
second client while one is served is turned away at once, like a serial port already open.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from iotfleet.emulator.chip import DATA_COMMANDS, Esp8266
from iotfleet.emulator.flashmem import FlashCounters, FlashMemory
from iotfleet.emulator.slip import SlipDecoder, encode_frame
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.model.names import check_mac

_RECV = 256 * 1024
_POLL = 0.2  # seconds between checks of the stop flag


@dataclass(frozen=True)
class Faults:
    """Misbehaviour to inject, for testing what the flashing engine does about it."""

    drop_after_blocks: int | None = None  # hang up when flash data block N+1 arrives
    drop_after_bytes: int | None = None  # program N bytes of a session, then vanish mid-block
    drop_times: int = 1  # how many sessions the drop applies to; later ones succeed
    report_mac: str | None = None  # answer this MAC instead of the board's own
    silent: bool = False  # accept connections, never answer (a board that is not there)
    stub_silent: bool = False  # the ROM answers, but the uploaded flasher stub never starts


def parse_mac(value: str) -> bytes:
    return bytes.fromhex(check_mac(value).replace(":", ""))


def loopback_address(listen: str) -> tuple[str, int]:
    """``127.0.0.1:PORT`` -> (host, port); only loopback: the emulator has no authentication."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:40001")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"--listen {listen!r}: emulated boards only listen on loopback")
    except ValueError as exc:
        if "loopback" in str(exc):
            raise
        raise ValueError(f"--listen {listen!r}: {host!r} is not an IP address") from None
    return host, int(port_text)


class _Link:
    """Optionally hold traffic to what a UART at the current baud rate would carry."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._busy_until = 0.0

    def carry(self, nbytes: int, baud: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        self._busy_until = max(now, self._busy_until) + nbytes * 10 / baud  # 8N1: 10 bits/byte
        if self._busy_until > now:
            time.sleep(self._busy_until - now)


class _HangUpError(Exception):
    """The session ends: the client left, or a fault makes the board vanish."""


class BoardServer:
    """An emulated ESP8266 listening on ``host:port`` with its flash in ``flash_file``."""

    def __init__(
        self,
        flash_file: Path,
        mac: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        flash_size: int | None = None,
        faults: Faults | None = None,
        serial_speed: bool = False,
        stats_file: Path | None = None,
        log: TextIO | None = None,
    ) -> None:
        self.faults = faults or Faults()
        self.mac = check_mac(mac)
        reported = self.faults.report_mac or self.mac
        self.flash = FlashMemory(Path(flash_file), flash_size)
        self.chip = Esp8266(
            self.flash, parse_mac(reported), stub_starts=not self.faults.stub_silent
        )
        self.stats_file = stats_file
        self._serial_speed = serial_speed
        self._log = log
        self._drops_left = self.faults.drop_times
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener = socket.create_server((host, port), backlog=16)
        self._listener.setblocking(False)  # a client that gave up must not block accept()
        self.host = host
        self.port = int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        """The port as esptool and iotfleet name it."""
        return f"socket://{self.host}:{self.port}"

    @property
    def counters(self) -> FlashCounters:
        return self.flash.counters

    # -- lifecycle -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve clients one at a time until ``stop()``."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(_POLL):
                    continue
                try:
                    conn, peer = self._listener.accept()
                except OSError:
                    continue
                self._serve(conn, peer)

    def start(self) -> BoardServer:
        """Serve from a background thread (tests); ``close()`` stops it."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name=self.url)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._listener.close()
        self._write_stats()
        self.flash.close()

    def __enter__(self) -> BoardServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- one client ----------------------------------------------------------------------------

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        counters = self.flash.counters
        counters.sessions += 1
        before = counters.bytes_programmed
        self.chip.reset()
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _Session(self, conn)
        reason = "client closed"
        try:
            session.run()
        except _HangUpError as exc:
            reason = str(exc) or reason
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            conn.close()
            self.flash.flush()
            self._write_stats()
        self._say(
            f"session {counters.sessions} from {peer[0]}:{peer[1]}: {reason}; "
            f"{counters.bytes_programmed - before} bytes programmed"
        )

    def _say(self, line: str) -> None:
        if self._log is not None:
            print(f"iotfleet-emulator {self.mac} {self.url}: {line}", file=self._log, flush=True)

    def _write_stats(self) -> None:
        if self.stats_file is not None:
            data = {"mac": self.mac, "port": self.port, **self.flash.counters.as_dict()}
            write_file_atomically(self.stats_file, json.dumps(data).encode(), mode=0o644)

    def _take_drop(self) -> bool:
        if self._drops_left <= 0:
            return False
        self._drops_left -= 1
        self.flash.counters.drops += 1
        return True


class _Session:
    """The conversation with one connected client."""

    def __init__(self, server: BoardServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.chip = server.chip
        self.faults = server.faults
        self.decoder = SlipDecoder()
        self.frames: collections.deque[bytes] = collections.deque()
        self.rx = _Link(server._serial_speed)
        self.tx = _Link(server._serial_speed)
        self.blocks = 0
        self.programmed_at_start = server.flash.counters.bytes_programmed
        if self.faults.drop_after_bytes is not None and server._drops_left > 0:
            self.chip.program_budget = self.faults.drop_after_bytes
        self.selector = selectors.DefaultSelector()

    def run(self) -> None:
        with self.selector:
            self.selector.register(self.conn, selectors.EVENT_READ)
            self.selector.register(self.server._listener, selectors.EVENT_READ)
            while True:
                while self.frames:
                    self._answer(self.frames.popleft())
                self._receive()

    def _receive(self) -> None:
        """Wait for bytes from the client; turn away other clients meanwhile (busy port)."""
        while True:
            if self.server._stop.is_set():
                raise _HangUpError("emulator stopping")
            for key, _ in self.selector.select(_POLL):
                if key.fileobj is self.server._listener:
                    self._turn_away()
                    continue
                data = self.conn.recv(_RECV)
                if not data:
                    raise _HangUpError()
                self.rx.carry(len(data), self.chip.baud)
                if not self.faults.silent:
                    self.frames.extend(self.decoder.feed(data))
                if self.frames:
                    return

    def _turn_away(self) -> None:
        try:
            other, _ = self.server._listener.accept()
        except OSError:
            return
        other.close()
        self.server._say("turned away a second client: the port is in use")

    def _answer(self, frame: bytes) -> None:
        is_data = len(frame) >= 2 and frame[0] == 0 and frame[1] in DATA_COMMANDS
        if is_data:
            self.blocks += 1
            limit = self.faults.drop_after_blocks
            if limit is not None and self.blocks > limit and self.server._take_drop():
                raise _HangUpError(f"fault: vanished at flash data block {self.blocks}")
        reply = self.chip.handle(frame)
        if self.chip.program_budget == 0 and self.server._take_drop():
            done = self.server.flash.counters.bytes_programmed - self.programmed_at_start
            # Gone in the middle of a block, like a board pulled off the station.
            raise _HangUpError(f"fault: vanished after {done} bytes programmed")
        for out in reply.frames:
            self._send(out)
        if reply.read_flash is not None:
            self._stream_flash(*reply.read_flash)

    def _send(self, payload: bytes) -> None:
        wire = encode_frame(payload)
        self.tx.carry(len(wire), self.chip.baud)
        self.conn.sendall(wire)

    def _stream_flash(self, offset: int, length: int, block: int, in_flight: int) -> None:
        """The stub's READ_FLASH: data frames, each acknowledged, then the MD5 of it all."""
        flash = self.server.flash
        data = flash.read(offset, length)
        sent = acked = 0
        while acked < length:
            while sent < length and sent - acked < in_flight * block:
                chunk = data[sent : sent + block]
                self._send(chunk)
                sent += len(chunk)
            acked = max(acked, self._next_ack())
        self._send(flash.md5(offset, length))

    def _next_ack(self) -> int:
        while True:
            while self.frames:
                frame = self.frames.popleft()
                if len(frame) == 4:
                    return int(struct.unpack("<I", frame)[0])
            self._receive()
