"""Benchmark: what one password login costs a real Mosquitto, per PBKDF2 iteration count.

Run:  .venv/bin/python bench/login_cost.py [--logins 40] [--iterations 101 1000 10000 50000]

For each count, a local Mosquitto (loopback, no TLS, so only the password check is measured)
with iotfleet's plugin verifies the password (the plugin, then Mosquitto's own check: two
PBKDF2-SHA512 runs per login). Sequential MQTT CONNECTs are timed until their CONNACK; the
broker is single-threaded, so 1 / (time per login) is what it serves per second, and what a
flood of wrong passwords costs everyone else. No assertions: the figures are the result.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotfleet.mosquitto.passwd import render_password_file
from iotfleet.roles.mosquitto.plugin_build import auth_plugin
from tests.support.local_broker import free_port, running_mosquitto

PASSWORD = secrets.token_urlsafe(24)  # a throwaway, for this run only


def _connect_packet(username: str, password: str) -> bytes:
    def field(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    body = field("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += field(f"bench-{time.monotonic_ns()}") + field(username) + field(password)
    return bytes([0x10, len(body)]) + body


def _login(port: int, password: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_connect_packet("bench", password))
        connack = sock.recv(4)
        return len(connack) == 4 and connack[3] == 0


def measure(iterations: int, logins: int) -> tuple[float, float]:
    """(ms per accepted login, ms per refused login)."""
    with tempfile.TemporaryDirectory(prefix="iotfleet-bench-") as work_dir:
        work = Path(work_dir)
        (work / "passwd").write_text(
            render_password_file({"bench": PASSWORD}, lambda u, p: b"s" * 12, iterations)
        )
        (work / "plugin.so").write_bytes(auth_plugin())
        port = free_port()
        conf = (
            f"per_listener_settings true\npersistence false\nlistener {port} 127.0.0.1\n"
            f"allow_anonymous false\nplugin {work / 'plugin.so'}\n"
            f"plugin_opt_password_file {work / 'passwd'}\npassword_file {work / 'passwd'}\n"
        )
        with running_mosquitto(conf, work, [port]):
            figures = []
            for password, accepted in ((PASSWORD, True), ("wrong-" + PASSWORD, False)):
                times = []
                for _ in range(logins):
                    start = time.perf_counter()
                    assert _login(port, password) is accepted
                    times.append(time.perf_counter() - start)
                figures.append(statistics.median(times) * 1000)
            return figures[0], figures[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logins", type=int, default=40)
    parser.add_argument("--iterations", type=int, nargs="+", default=[101, 1000, 10000, 50000])
    args = parser.parse_args()
    print(f"{'iterations':>10}  {'login ms':>9}  {'refusal ms':>10}  {'logins/s':>8}")
    for count in args.iterations:
        ok, refused = measure(count, args.logins)
        print(f"{count:>10}  {ok:>9.2f}  {refused:>10.2f}  {1000 / ok:>8.0f}")


if __name__ == "__main__":
    main()
