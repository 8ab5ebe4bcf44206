"""A real SSH server on loopback (paramiko) that drops the connection when a client opens a
session: what a host that loses power between two commands does to paramiko, whose
``open_session`` then raises ``EOFError`` while it waits for the answer (pyinfra-dev/pyinfra#1220).

It accepts one client key, which it writes with a ``known_hosts`` line for its own host key, so
pyinfra connects to it with strict host key checking as to any host.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import AUTH_FAILED, AUTH_SUCCESSFUL, OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

ADDRESS = "127.0.0.1"


def _new_key(path: Path) -> paramiko.Ed25519Key:
    path.touch(mode=0o600)
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    return paramiko.Ed25519Key.from_private_key_file(str(path))


class _DropOnSession(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, connection: socket.socket) -> None:
        self._client_key = client_key
        self._connection = connection

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key == self._client_key:
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        # The power goes as the command arrives: no answer, the connection just ends.
        self._connection.shutdown(socket.SHUT_RDWR)
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class DroppingSSHServer:
    """``with DroppingSSHServer(directory) as server:`` ``server.port``, ``server.client_key``
    (a file) and ``server.known_hosts`` (a file) are what an inventory needs."""

    def __init__(self, directory: Path) -> None:
        self.client_key = directory / "id_ed25519"
        self.known_hosts = directory / "known_hosts"
        self._client = _new_key(self.client_key)
        self._host_key = _new_key(directory / "host_key")
        self._listener = socket.create_server((ADDRESS, 0))
        self.port = self._listener.getsockname()[1]
        self.known_hosts.write_text(
            f"[{ADDRESS}]:{self.port} {self._host_key.get_name()} {self._host_key.get_base64()}\n"
        )
        self._threads: list[threading.Thread] = []
        self._transports: list[paramiko.Transport] = []

    def __enter__(self) -> DroppingSSHServer:
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self._listener.close()
        for transport in self._transports:
            transport.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            transport = paramiko.Transport(connection)
            transport.add_server_key(self._host_key)
            transport.start_server(server=_DropOnSession(self._client, connection))
            self._transports.append(transport)
