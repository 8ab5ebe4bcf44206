"""Reach a serial device of an SSH flash station: the relay over SSH, esptool over loopback.

For each board, one SSH channel runs ``station_relay`` on the station (the device opened
exclusively, RFC 2217 on the channel). On the control machine a loopback listener, accepting
only connections made by this very process, hands esptool an ``rfc2217://127.0.0.1:PORT`` URL
that is pumped to the channel. Nothing listens on the station's network, and the SSH
connection (authentication, host key) is the rollout's own.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from iotfleet.flash.errors import FailureKind, FlashError
from iotfleet.model.ssh import SshEndpoint

RELAY_SOURCE = Path(__file__).with_name("station_relay.py")
HEADER_TIMEOUT = 20.0  # seconds for SSH exec + python3 start + opening the device
ACCEPT_TIMEOUT = 20.0
_KINDS: dict[str, FailureKind] = {"port": "port", "busy": "busy"}


class Channel(Protocol):
    """What is used of a paramiko channel."""

    def exec_command(self, command: str) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def recv(self, nbytes: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class StationLink(Protocol):
    """An authenticated connection to a flash station that opens command channels."""

    @property
    def station(self) -> str: ...

    def open_channel(self) -> Channel: ...


class ParamikoStationLink:
    """A station reached through an open paramiko transport (the rollout's SSH connection)."""

    def __init__(self, station: str, transport: object) -> None:
        self._station = station
        self._transport = transport

    @property
    def station(self) -> str:
        return self._station

    def open_channel(self) -> Channel:
        channel: Channel = self._transport.open_session(timeout=HEADER_TIMEOUT)  # type: ignore[attr-defined]
        return channel


class ProcessChannel:
    """A channel that is a local process's stdin/stdout (``ssh HOST``, or the relay itself)."""

    def __init__(self, argv_prefix: Sequence[str]) -> None:
        self._prefix = list(argv_prefix)
        self._process: subprocess.Popen[bytes] | None = None
        self._timeout: float | None = None

    def exec_command(self, command: str) -> None:
        self._process = subprocess.Popen(
            [*self._prefix, command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )

    def _proc(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise OSError("the channel has no command running")
        return self._process

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, nbytes: int) -> bytes:
        stdout = self._proc().stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], self._timeout)
        if not ready:
            raise TimeoutError("no answer from the station")
        return os.read(stdout.fileno(), nbytes)

    def sendall(self, data: bytes) -> None:
        stdin = self._proc().stdin
        assert stdin is not None
        stdin.write(data)

    def recv_stderr_ready(self) -> bool:
        stderr = self._proc().stderr
        return stderr is not None and bool(select.select([stderr], [], [], 0)[0])

    def recv_stderr(self, nbytes: int) -> bytes:
        stderr = self._proc().stderr
        return os.read(stderr.fileno(), nbytes) if stderr is not None else b""

    def shutdown_write(self) -> None:
        stdin = self._proc().stdin
        if stdin is not None and not stdin.closed:
            stdin.close()

    def close(self) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(OSError):
            self.shutdown_write()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


class CommandStationLink:
    """A station reached by running a command per channel: ``ssh ... user@host`` (the OpenSSH
    client, with the inventory's key and known_hosts), or nothing for this machine."""

    def __init__(self, station: str, argv_prefix: Sequence[str]) -> None:
        self._station = station
        self._prefix = list(argv_prefix)

    @property
    def station(self) -> str:
        return self._station

    def open_channel(self) -> Channel:
        return ProcessChannel(self._prefix)


def ssh_argv(endpoint: SshEndpoint) -> list[str]:
    """The OpenSSH command line that reaches a host as pyinfra does, unattended (the options
    are the endpoint's own; a config file is read with ``-F``)."""
    argv = ["ssh", "-T"]
    for option, value in endpoint.openssh_options():
        argv += ["-F", value] if option == "Include" else ["-o", f"{option}={value}"]
    return [*argv, "--", endpoint.target]


def relay_command(device: str) -> str:
    """The shell command that starts the relay for ``device`` on the station."""
    return f"python3 -c {shlex.quote(RELAY_SOURCE.read_text())} {shlex.quote(device)}"


def is_device_path(port: str) -> bool:
    """A serial device path (``/dev/ttyUSB0``), not a pyserial URL."""
    return "://" not in port


@contextlib.contextmanager
def relayed_port(link: StationLink, device: str) -> Iterator[str]:
    """Open ``device`` on the station; yields the ``rfc2217://`` URL esptool should use."""
    where = f"{device} on flash station {link.station}"
    try:
        channel = link.open_channel()
        channel.exec_command(relay_command(device))
    except Exception as exc:  # paramiko's SSHException, socket errors, EOF
        raise FlashError(f"cannot reach {where} over SSH: {exc}", "port") from None
    try:
        _expect_ok(channel, where, link.station)
        with _loopback_pump(channel) as url:
            yield url
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def _expect_ok(channel: Channel, where: str, station: str) -> None:
    channel.settimeout(HEADER_TIMEOUT)
    header = b""
    try:
        while not header.endswith(b"\n") and len(header) < 4096:
            chunk = channel.recv(1)
            if not chunk:
                break
            header += chunk
    except (TimeoutError, OSError) as exc:
        raise FlashError(f"the serial relay for {where} did not answer: {exc}", "port") from None
    line = header.decode(errors="replace").strip()
    if line == "OK":
        return
    if line.startswith("ERROR "):
        _, kind, message = [*line.split(" ", 2), "", ""][:3]
        raise FlashError(f"flash station {station}: {message}", _KINDS.get(kind, "port"))
    detail = _stderr_of(channel) or "no answer"
    raise FlashError(f"the serial relay for {where} did not start: {detail}", "port")


def _stderr_of(channel: Channel) -> str:
    text = b""
    with contextlib.suppress(Exception):
        while channel.recv_stderr_ready() and len(text) < 4096:
            text += channel.recv_stderr(4096)
    return text.decode(errors="replace").strip().splitlines()[-1] if text.strip() else ""


@contextlib.contextmanager
def _loopback_pump(channel: Channel) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not made_by_this_process(peer[1], port):
                conn.close()  # another local user: the board is not theirs
                continue
            listener.close()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acks are tiny: no Nagle
            _pump(conn, channel, stop)
            return

    worker = threading.Thread(target=serve, name=f"iotfleet-relay-{port}", daemon=True)
    worker.start()
    try:
        yield f"rfc2217://127.0.0.1:{port}"
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            channel.shutdown_write()  # the relay sees EOF, closes the device, exits
        with contextlib.suppress(OSError):
            listener.close()
        worker.join(timeout=5)


def _pump(conn: socket.socket, channel: Channel, stop: threading.Event) -> None:
    """Copy bytes both ways until either side closes."""

    def upstream() -> None:  # esptool -> station
        with contextlib.suppress(Exception):
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                channel.sendall(data)
        with contextlib.suppress(Exception):
            channel.shutdown_write()

    sender = threading.Thread(target=upstream, daemon=True)
    sender.start()
    channel.settimeout(None)
    with contextlib.suppress(Exception):
        while True:
            data = channel.recv(65536)
            if not data:
                break
            conn.sendall(data)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()
    sender.join(timeout=5)


def made_by_this_process(peer_port: int, server_port: int, proc: Path = Path("/proc")) -> bool:
    """Whether the loopback connection from ``peer_port`` is a socket this process holds.

    The relay carries a board's secrets being written: only esptool, running in this process,
    may connect. Linux lists each TCP socket's inode in /proc/net/tcp; ours are in /proc/self/fd.
    """
    inode = _socket_inode(peer_port, server_port, proc)
    if inode is None:
        return False
    fd_dir = proc / "self" / "fd"
    target = f"socket:[{inode}]"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(fd_dir / fd) == target:
                return True
    return False


def _socket_inode(local_port: int, remote_port: int, proc: Path) -> str | None:
    try:
        lines = (proc / "net" / "tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if local == f"0100007F:{local_port:04X}" and remote == f"0100007F:{remote_port:04X}":
            return inode
    return None
