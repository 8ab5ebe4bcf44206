"""A real Mosquitto process on a loopback port, for tests that need a broker but no lab."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"mosquitto exited {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                message = f"mosquitto did not listen on {port}:\n{log.read_text()}"
                raise AssertionError(message) from None
            time.sleep(0.05)


@contextmanager
def running_mosquitto(config: str, workdir: Path, ports: list[int]) -> Iterator[Path]:
    """Run ``/usr/sbin/mosquitto`` with ``config`` until the block ends; yields its log path.

    The test's files live in pytest's root-only temp dirs, so the broker keeps running as root
    (``user root``) instead of dropping to the mosquitto user.
    """
    conf = workdir / "mosquitto.conf"
    # Retained messages stay in this test's own dir, never in the machine's /var/lib/mosquitto
    # (shared by every test run here: one run's retained messages would leak into the next).
    config = re.sub(
        r"^persistence_location .*$", f"persistence_location {workdir}/", config, flags=re.M
    )
    conf.write_text("user root\n" + config)
    log = workdir / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out, stderr=out)
        try:
            for port in ports:
                wait_for_port(port, process, log)
            yield log
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
