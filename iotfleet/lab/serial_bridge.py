"""A board on a device path inside a lab host: a pty whose slave is linked at, say,
/dev/ttyUSB0, relayed to an emulated board's loopback port.

The lab runs this file as ``nsenter -t <host's systemd> -m -- /usr/bin/python3 -I -c <this
source> PORT DEVICE HOST_PID``: the host's own python3 (stdlib only, 3.11 and 3.13) in the
host's mount namespace - so the pty and the link exist there - but in the control machine's
network namespace, where the emulator listens on 127.0.0.1 only.

Each time something opens the device is one session and one fresh TCP connection, which the
emulator treats as a reset into the ROM bootloader, like a USB board reset by its DTR/RTS lines
(the pty has no modem lines: those ioctls fail with ENOTTY, as with any pty).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import sys
import termios
import time
import tty
from types import FrameType

IDLE = 0.05  # seconds between looks while nothing has the device open (without inotify)
CHUNK = 65536
EXIT_REFUSED = 2  # the device path could not be made (exists, no such directory...)
IN_OPEN = 0x20


def main(argv: list[str]) -> int:
    port, device, host_pid = int(argv[1]), argv[2], int(argv[3])
    # The host's PID 1 (seen from the control machine): when it ends, the host is down and
    # this bridge must not keep its mount namespace alive.
    host = os.pidfd_open(host_pid)
    master, slave = os.openpty()
    tty.setraw(slave)  # kept by the pty while the master is open: no echo, no line editing
    pts = os.ttyname(slave)
    # From now on the master reports POLLHUP whenever nothing has the slave open.
    os.close(slave)
    os.set_blocking(master, False)
    try:
        os.symlink(pts, device)
    except OSError as exc:
        print(f"serial bridge: cannot make {device}: {exc.strerror}", flush=True)
        return EXIT_REFUSED
    signal.signal(signal.SIGTERM, _exit_on_signal)
    print(f"serial bridge: {device} -> {pts} -> 127.0.0.1:{port}", flush=True)
    try:
        Relay(master, pts, port, host, watch_opens(pts)).run()
    finally:
        _remove_link(device, pts)
    return 0


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _remove_link(device: str, pts: str) -> None:
    """Remove the device link if it is still ours (never another file at that path)."""
    with contextlib.suppress(OSError):
        if os.readlink(device) == pts:
            os.unlink(device)


def watch_opens(pts: str) -> int | None:
    """An inotify descriptor that becomes readable each time ``pts`` is opened (None if
    inotify is not available: then closing and reopening at once may go unnoticed).

    POLLHUP alone misses a close followed at once by an open (the pty is open again when
    the bridge looks); an open event is queued and never missed.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0 or int(libc.inotify_add_watch(fd, pts.encode(), IN_OPEN)) < 0:
            return None
    except (OSError, AttributeError):
        return None
    return fd


class Relay:
    """Pump bytes between the pty master and one emulator connection per device session."""

    def __init__(self, master: int, pts: str, port: int, host: int, opens: int | None) -> None:
        self.master = master
        self.pts = pts
        self.port = port
        self.host = host
        self.opens = opens
        self.board: socket.socket | None = None
        self.idle = False  # nothing has the device open: wait for an open, not for bytes

    def run(self) -> None:
        while True:
            poller = select.poll()
            for fd in (self.host, self.opens):
                if fd is not None:
                    poller.register(fd, select.POLLIN)
            if not self.idle:
                poller.register(self.master, select.POLLIN)
            board = self.board
            if board is not None:
                poller.register(board, select.POLLIN)
            ready = dict(poller.poll())
            if self.host in ready:
                print("serial bridge: the host stopped", flush=True)
                return
            # Opens first: bytes of a new session must not reach the previous connection.
            if self.opens is not None and self.opens in ready and self._drain_opens():
                self.idle = False
                self._end_session()
            if self.master in ready:
                self._from_device(ready[self.master])
            if board is not None and board is self.board and board.fileno() in ready:
                self._from_board()

    def _drain_opens(self) -> bool:
        """Consume queued open events; True if there were any."""
        assert self.opens is not None
        seen = False
        while True:
            try:
                seen = bool(os.read(self.opens, 4096)) or seen
            except BlockingIOError:
                return seen

    def _from_device(self, events: int) -> None:
        if events & select.POLLHUP:
            # Nothing has the device open (any bytes left belong to a closed session).
            self._end_session()
            if self.opens is None:
                time.sleep(IDLE)
            else:
                self.idle = self._nobody_has_it_open()
            return
        try:
            data = os.read(self.master, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._end_session()
            return
        if self.board is None:
            self.board = self._connect()
        if self.board is not None:
            try:
                self.board.sendall(data)
            except OSError:
                self._drop_board()

    def _nobody_has_it_open(self) -> bool:
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def _from_board(self) -> None:
        assert self.board is not None
        try:
            data = self.board.recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            # The board hung up (a fault, or it turned us away): the next bytes reconnect.
            self._drop_board()
            return
        self._write_device(data)

    def _connect(self) -> socket.socket | None:
        try:
            board = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError as exc:
            # Like a board without power: the bytes go nowhere and the client times out.
            print(f"serial bridge: board 127.0.0.1:{self.port}: {exc}", flush=True)
            return None
        board.settimeout(None)
        board.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return board

    def _write_device(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                # The reader is slow: wait for room, unless it closed the device meanwhile.
                poller = select.poll()
                poller.register(self.master, select.POLLOUT)
                if any(ev & select.POLLHUP for _, ev in poller.poll(1000)):
                    self._end_session()
                    return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                self._end_session()
                return

    def _drop_board(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def _end_session(self) -> None:
        if self.board is None:
            return
        self._drop_board()
        # Replies that reached the pty after the client closed it would wait in its input
        # queue for the next client: flush them, so each open starts clean like a reset.
        with contextlib.suppress(OSError):
            fd = os.open(self.pts, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                termios.tcflush(fd, termios.TCIFLUSH)
            finally:
                os.close(fd)
        if self.opens is not None:
            self._drain_opens()  # our own open above; a client's open now needs no new session


if __name__ == "__main__":
    sys.exit(main(sys.argv))
