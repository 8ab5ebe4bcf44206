"""Mosquitto password hashing, checked against the real mosquitto_passwd and broker."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from iotfleet.mosquitto.passwd import (
    derive_salt,
    hash_password,
    parse_password_file,
    render_password_file,
    verify_password,
)
from tests.support.waiting import wait_until


def test_hash_has_mosquitto_format() -> None:
    stored = hash_password("correct horse battery staple")
    kind, iterations, salt, digest = stored.split("$")[1:]
    assert (kind, iterations, len(salt), len(digest)) == ("7", "101", 16, 88)
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("correct horse battery stapler", stored)


def test_we_verify_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret-pass-word"], check=True
    )
    stored = parse_password_file(path.read_text())["alice"]
    assert verify_password("s3cret-pass-word", stored)
    assert not verify_password("wrong", stored)


def _no_salt(user: str, password: str) -> bytes:
    raise AssertionError(f"{user} hashed again")


def test_salts_are_derived_so_the_same_inventory_renders_the_same_file() -> None:
    key = b"k" * 32

    def salts(key: bytes) -> Callable[[str, str], bytes]:
        def salt_of(user: str, password: str) -> bytes:
            return derive_salt(key, user=user, password=password)

        return salt_of

    passwords = {"alice": "a" * 20, "bob": "b" * 20}
    first = render_password_file(passwords, salts(key), 1000)
    assert render_password_file(dict(passwords), salts(key), 1000) == first
    entries = parse_password_file(first)
    assert all(verify_password(passwords[u], entries[u]) for u in passwords)
    # A changed password gets a new salt; the others keep their bytes.
    changed = parse_password_file(
        render_password_file({**passwords, "bob": "B" * 20}, salts(key), 1000)
    )
    assert changed["alice"] == entries["alice"]
    assert changed["bob"].split("$")[3] != entries["bob"].split("$")[3]
    # The same password of another user is another hash; another fleet (salt key) too.
    twins = parse_password_file(
        render_password_file({"a": "x" * 20, "b": "x" * 20}, salts(key), 1000)
    )
    assert twins["a"].split("$")[3:] != twins["b"].split("$")[3:]
    other = parse_password_file(render_password_file(passwords, salts(b"o" * 32), 1000))
    assert other["alice"] != entries["alice"]
    # A run hashes each entry once for every listener and broker it is on.
    memo: dict[tuple[str, str, int], str] = {}
    once = render_password_file(passwords, salts(key), 1000, memo)
    assert len(memo) == 2 and render_password_file(passwords, _no_salt, 1000, memo) == once
    # Another iteration count: every entry is hashed anew.
    stronger = parse_password_file(render_password_file(passwords, salts(key), 2000))
    assert {h.split("$")[2] for h in stronger.values()} == {"2000"}
    assert verify_password("a" * 20, stronger["alice"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_broker_accepts_our_hash_and_refuses_a_wrong_password(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text(
        render_password_file({"dev": "x" * 24}, lambda u, p: b"s" * 12, 1000)
    )
    port = _free_port()
    (tmp_path / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {tmp_path / 'passwd'}\npersistence false\n"
        # pytest's tmp dirs are private to root; do not drop to the mosquitto user
        "user root\n"
    )
    broker = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(tmp_path / "m.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            """mosquitto listens"""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(listening, timeout=30)

        def publish(password: str) -> int:
            return subprocess.run(
                [
                    *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port)),
                    *("-u", "dev", "-P", password, "-t", "t", "-m", "m"),
                ],
                capture_output=True,
                timeout=10,
            ).returncode

        assert publish("x" * 24) == 0
        assert publish("y" * 24) != 0
    finally:
        broker.terminate()
        broker.wait(timeout=10)
