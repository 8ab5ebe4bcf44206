"""SLIP framing as the ESP8266 serial bootloader speaks it (0xC0 delimits, 0xDB escapes)."""

from __future__ import annotations

END = b"\xc0"
ESC = b"\xdb"


def encode_frame(payload: bytes) -> bytes:
    """One frame on the wire: ``C0 <escaped payload> C0``."""
    # Escape 0xDB first, or the escapes added for 0xC0 would be escaped again.
    return END + payload.replace(ESC, b"\xdb\xdd").replace(END, b"\xdb\xdc") + END


def decode_payload(escaped: bytes) -> bytes:
    """Undo the escaping of one frame's content (each 0xDB starts exactly one escape pair)."""
    if ESC not in escaped:
        return escaped
    return escaped.replace(b"\xdb\xdc", END).replace(b"\xdb\xdd", ESC)


class SlipDecoder:
    """Turns a byte stream into frames; bytes between frames (line noise) are dropped.

    Works on whole chunks with ``bytes.find`` instead of byte by byte: a 2 MB image arrives in
    thousands of frames and the emulator must stay cheap when 8 boards are flashed at once.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, in order."""
        self._buffer += data
        frames: list[bytes] = []
        start = self._buffer.find(END)
        if start < 0:
            self._buffer.clear()  # no frame has started: everything is noise
            return frames
        while True:
            end = self._buffer.find(END, start + 1)
            if end < 0:
                break
            if end > start + 1:
                frames.append(decode_payload(bytes(self._buffer[start + 1 : end])))
                # The closing END may also open the next frame (C0 a C0 b C0): keep it.
            start = end
        del self._buffer[:start]
        return frames
