"""Benchmark: password-listener connections one source gets per second, with and without the
firewall's per-source limit.

Run as root:  .venv/bin/python bench/bruteforce.py [--lab NAME] [--rate 200] [--seconds 10]

Uses the lab NAME (default: boots a one-broker lab ``bench-brute`` and takes it down after),
rolls out inventory/lab.py twice: the limit on with the control machine not exempt, then the
limit off (firewall_password_rate=0). Each time it offers --rate new TCP connections a second
for --seconds to the password listener 8884 and to the certificate listener 8883 from the
control machine, and counts the ones that were accepted. The lab is rolled out as inventory/
lab.py says at the end. Traffic stays on the lab bridge.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.flood import Flood, flood
from tests.support.rollout import run_pyinfra

PASSWORD_PORT, CERTIFICATE_PORT = 8884, 8883
LIMITED = ("--data", "firewall_password_limit_exempt=[]")
UNLIMITED = ("--data", "firewall_password_rate=0")


def _iotfleet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "iotfleet", *args], check=True)


def _broker(lab: str) -> str:
    from iotfleet.lab.state import load_lab

    return load_lab(lab).hosts[0].address


def _rollout(lab: str, *extra: str) -> None:
    result = run_pyinfra(lab, "deploy/brokers.py", *extra)
    if result.returncode != 0:
        raise SystemExit(result.explain())


def _per_second(result: Flood, seconds: float) -> str:
    after = result.accepted_in(1.0, seconds + 1.0) / max(seconds - 1.0, 1.0)
    return f"{result.accepted_in(0.0, 1.0):>6} then {after:6.1f}/s"


def measure(lab: str, rate: int, seconds: float) -> dict[str, dict[int, Flood]]:
    address = _broker(lab)
    results: dict[str, dict[int, Flood]] = {}
    for label, extra in (("without limit", UNLIMITED), ("with limit", LIMITED)):
        _rollout(lab, *extra)
        results[label] = {
            port: flood(address, port, rate, seconds) for port in (PASSWORD_PORT, CERTIFICATE_PORT)
        }
    return results


def report(results: dict[str, dict[int, Flood]], rate: int, seconds: float) -> None:
    labels = list(results)
    print(f"\none source offering {rate} new TCP connections/s for {seconds:g} s")
    print(f"{'':34}" + "".join(f"{label:>26}" for label in labels))
    for port, what in (
        (PASSWORD_PORT, "8884 (password)"),
        (CERTIFICATE_PORT, "8883 (certificate)"),
    ):
        row = [results[label][port] for label in labels]
        print(
            f"{what + ' accepted':34}" + "".join(f"{r.accepted:>17} of {r.offered:<6}" for r in row)
        )
        print(
            f"{what + ' 1st s, then':34}" + "".join(f"{_per_second(r, seconds):>26}" for r in row)
        )
        print(
            f"{what + ' accepted/s':34}" + "".join(f"{r.accepted / r.seconds:>26.1f}" for r in row)
        )
    off = results[labels[0]][PASSWORD_PORT]
    on = results[labels[1]][PASSWORD_PORT]
    print(
        f"\npassword guesses one source gets on 8884: {off.accepted / off.seconds:.0f}/s without, "
        f"{on.accepted / on.seconds:.1f}/s with the limit "
        f"({off.accepted / max(on.accepted, 1):.0f}x fewer)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", help="an existing lab (default: boot bench-brute)")
    parser.add_argument("--rate", type=int, default=200, help="offered connections per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each flood lasts")
    args = parser.parse_args()
    lab = args.lab or "bench-brute"
    if args.lab is None:
        _iotfleet("lab", "up", "--name", lab, "--brokers", "1")
    try:
        if args.lab is None:
            _rollout(lab)  # PKI, broker, firewall from nothing
        results = measure(lab, args.rate, args.seconds)
        report(results, args.rate, args.seconds)
    finally:
        if args.lab is None:
            _iotfleet("lab", "down", "--name", lab)
        else:
            _rollout(lab)


if __name__ == "__main__":
    main()
