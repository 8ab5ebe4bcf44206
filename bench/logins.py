"""Benchmark: what a password login costs the broker at each PBKDF2 iteration count (issue 10).

Run:  .venv/bin/python bench/logins.py [--logins 100]

For each iteration count it starts the real Mosquitto on a loopback port with iotfleet's own
auth plugin (which verifies the password, then Mosquitto's password_file check verifies it
again) and a password file of that count, then logs in N times in a row with paho-mqtt, with
the right password and with a wrong one (MQTT over plain TCP on loopback, so the figures are the
password check, not TLS). It prints logins per second and the milliseconds one PBKDF2-SHA512
verify takes in this process, beside Mosquitto's own default of 101 iterations.

A wrong password costs one verify (the plugin refuses before Mosquitto's check), a right one
two: the broker is single-threaded, so its ceiling in logins per second is what an attacker
without the rate limit could make it spend.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roles.mosquitto.plugin_build import auth_plugin

from iotfleet.model.settings import MosquittoSettings
from iotfleet.mosquitto.passwd import hash_password
from tests.support.local_broker import free_port, running_mosquitto

USER = "bench-user"
PASSWORD = secrets.token_urlsafe(24)  # made per run: nothing to keep
BASELINE = 101  # mosquitto_passwd's default


def verify_ms(iterations: int, rounds: int = 20) -> float:
    salt = b"0123456789ab"
    started = time.perf_counter()
    for _ in range(rounds):
        hashlib.pbkdf2_hmac("sha512", PASSWORD.encode(), salt, iterations, 64)
    return (time.perf_counter() - started) / rounds * 1000


def login(port: int, password: str) -> bool:
    outcome: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=USER, protocol=mqtt.MQTTv311)
    client.username_pw_set(USER, password)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        outcome.append(not rc.is_failure)

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=10)
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    return bool(outcome and outcome[0])


def logins_per_second(port: int, password: str, count: int, expect: bool) -> float:
    started = time.perf_counter()
    for _ in range(count):
        if login(port, password) != expect:
            sys.exit(f"a login with the {'right' if expect else 'wrong'} password went wrong")
    return count / (time.perf_counter() - started)


def measure(iterations: int, count: int, plugin: Path, work: Path) -> tuple[float, float, float]:
    port = free_port()
    passwd = work / f"passwd-{iterations}"
    passwd.write_text(f"{USER}:{hash_password(PASSWORD, iterations=iterations)}\n")
    config = (
        f"per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"plugin {plugin}\nplugin_opt_listener {port}\nplugin_opt_password_file {passwd}\n"
        f"password_file {passwd}\n"
    )
    run_dir = work / f"run-{iterations}"
    run_dir.mkdir()
    with running_mosquitto(config, run_dir, [port]):
        right = logins_per_second(port, PASSWORD, count, expect=True)
        wrong = logins_per_second(port, "wrong-" + PASSWORD, count, expect=False)
    return verify_ms(iterations), right, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logins", type=int, default=100, help="logins per measurement")
    args = parser.parse_args()
    chosen = MosquittoSettings().password_iterations
    counts = sorted({BASELINE, 1000, chosen, 100_000})
    with tempfile.TemporaryDirectory(prefix="iotfleet-bench-") as tmp:
        work = Path(tmp)
        plugin = work / "iotfleet_auth.so"
        plugin.write_bytes(auth_plugin())
        rows = [(n, *measure(n, args.logins, plugin, work)) for n in counts]
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"\npassword logins on one Mosquitto (plugin + password_file), {args.logins} each, "
          f"load {load}\n")  # fmt: skip
    print(f"{'iterations':>10} {'verify ms':>10} {'right/s':>9} {'wrong/s':>9} {'vs 101':>8}")
    base_wrong = rows[0][3]
    for iterations, ms, right, wrong in rows:
        mark = "  <- mosquitto_password_iterations" if iterations == chosen else ""
        print(
            f"{iterations:>10} {ms:>10.2f} {right:>9.1f} {wrong:>9.1f} "
            f"{base_wrong / wrong:>7.1f}x{mark}"
        )


if __name__ == "__main__":
    main()
