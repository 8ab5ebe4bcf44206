"""Benchmark: concurrent authenticated mTLS clients on one hardened lab broker.

Run as root:  .venv/bin/python bench/connections.py [--clients 10000] [--suite bookworm]

Boots a one-broker lab, rolls out a fleet of N devices (each with its own certificate, as in
production: the broker checks chain and CRL and gets a 10,000-user ACL), then opens N
connections from the control machine over the lab bridge: TLS 1.2+ handshake with the device's
certificate, MQTT CONNECT, CONNACK accepted. It holds them all open, asks the broker through an
admin session how many clients it has connected, and prints handshakes per second beside the
target. Bounded in count (--clients) and time (--deadline); traffic stays inside the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from iotfleet.fleet.inventory import load_fleet
from iotfleet.fleet.paths import fleet_dir, state_root
from iotfleet.pki import PkiStore

REPO = Path(__file__).resolve().parents[1]
LAB = "bench-conn"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
PORT = 8883
TARGET_CLIENTS = 10_000
# Handshakes in progress at once: keeps the broker's listen backlog from overflowing.
IN_FLIGHT = 256

INVENTORY = '''
"""Bench fleet: the bench-conn lab's broker."""
from iotfleet.lab.inventory import lab_inventory_groups

brokers = lab_inventory_groups("{lab}")["brokers"]
'''

GROUP_DATA = '''
"""Bench fleet: {count} devices, one admin."""

fleet_name = "{lab}"
fleet_devices = [{{"id": f"bench-{{i:05d}}"}} for i in range({count})]
fleet_clients = [{{"name": "bench-admin", "roles": ["admin"]}}]
pki_passphrase_generated = True
'''


@dataclass
class Outcome:
    accepted: int = 0
    refused: int = 0
    errors: int = 0
    first_error: str = ""


def run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": LAB},
    )  # fmt: skip


def write_inventory(directory: Path, count: int) -> Path:
    (directory / "group_data").mkdir(parents=True, exist_ok=True)
    (directory / "conn.py").write_text(textwrap.dedent(INVENTORY.format(lab=LAB)))
    (directory / "group_data" / "conn.py").write_text(
        textwrap.dedent(GROUP_DATA.format(lab=LAB, count=count))
    )
    return directory / "conn.py"


def connect_packet(client_id: str, keepalive: int) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, no credentials beyond the certificate."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive)
    payload = struct.pack("!H", len(cid)) + cid
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body


def client_contexts(store: PkiStore, names: list[str], workdir: Path) -> list[ssl.SSLContext]:
    """One TLS context per device (Python loads client certificates from files only)."""
    ca = workdir / "ca.pem"
    ca.write_bytes(store.ca_chain_pem())
    contexts = []
    for name in names:
        cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
        cert.write_bytes(store.certificate_pem(name))
        key.touch(mode=0o600)
        key.write_bytes(store.private_key_pem(name))
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert), str(key))
        contexts.append(context)
        cert.unlink()
        key.unlink()
    return contexts


async def open_one(
    host: str,
    name: str,
    context: ssl.SSLContext,
    gate: asyncio.Semaphore,
    outcome: Outcome,
    held: list[asyncio.StreamWriter],
) -> None:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, PORT, ssl=context, server_hostname=host), 60
            )
            writer.write(connect_packet(name, keepalive=0))
            await writer.drain()
            connack = await asyncio.wait_for(reader.readexactly(4), 60)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            outcome.errors += 1
            outcome.first_error = outcome.first_error or repr(exc)
            return
        if connack[0] == 0x20 and connack[3] == 0:
            outcome.accepted += 1
            held.append(writer)
        else:
            outcome.refused += 1
            writer.close()


async def open_all(
    host: str, names: list[str], contexts: list[ssl.SSLContext]
) -> tuple[Outcome, float, list[asyncio.StreamWriter]]:
    outcome = Outcome()
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(IN_FLIGHT)
    start = time.monotonic()
    await asyncio.gather(
        *(open_one(host, n, c, gate, outcome, held) for n, c in zip(names, contexts, strict=True))
    )
    return outcome, time.monotonic() - start, held


async def open_hold_count(
    host: str,
    names: list[str],
    contexts: list[ssl.SSLContext],
    store: PkiStore,
    deadline: float,
    workdir: Path,
) -> tuple[Outcome, float, int]:
    """Open every connection, then count them on the broker while they are all held open."""
    outcome, elapsed, held = await asyncio.wait_for(open_all(host, names, contexts), deadline)
    try:
        connected = await asyncio.to_thread(broker_connected_clients, host, store, workdir)
    finally:
        for writer in held:
            writer.close()
    return outcome, elapsed, connected


def broker_connected_clients(host: str, store: PkiStore, workdir: Path) -> int:
    """``$SYS/broker/clients/connected`` as the broker itself reports it.

    Asked with Debian's mosquitto_sub in its own process: this one holds thousands of sockets,
    more than paho's select() loop can watch.
    """
    ca, cert, key = workdir / "ca.pem", workdir / "admin.crt", workdir / "admin.key"
    ca.write_bytes(store.ca_chain_pem())
    cert.write_bytes(store.certificate_pem("bench-admin"))
    key.touch(mode=0o600)
    key.write_bytes(store.private_key_pem("bench-admin"))
    result = subprocess.run(
        ["mosquitto_sub", "-h", host, "-p", str(PORT), "--cafile", str(ca), "--cert", str(cert),
         "--key", str(key), "-t", "$SYS/broker/clients/connected", "-C", "2", "-W", "30"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    key.unlink()
    # The first message is the retained value, up to sys_interval (10 s) old; the second is
    # published after every connection above was open.
    counts = result.stdout.split()
    if result.returncode != 0 or len(counts) != 2 or not counts[-1].isdigit():
        print(f"  note: mosquitto_sub could not read the count: {result.stderr.strip()}")
        return -1
    return int(counts[-1]) - 1  # minus mosquitto_sub itself


def raise_fd_limit(clients: int) -> None:
    want = clients + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS)
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--deadline", type=float, default=600, help="seconds for all connections")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/connections.py needs root (it boots a lab)")
    if not 1 <= args.clients <= 20_000:
        sys.exit("--clients must be 1..20000 (the broker's max_connections)")
    raise_fd_limit(args.clients)

    work = state_root() / "bench" / "connections"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    try:
        up = run(
            [
                sys.executable,
                "-m",
                "iotfleet",
                "lab",
                "up",
                "--name",
                LAB,
                "--brokers",
                "1",
                "--suite",
                args.suite,
            ]
        )
        if up.returncode != 0:
            sys.exit(f"lab up failed:\n{up.stderr}")
        inventory = write_inventory(work / "inventory", args.clients)
        start = time.monotonic()
        rollout = run([PYINFRA, "-y", str(inventory), "deploy.py"])
        rollout_s = time.monotonic() - start
        if rollout.returncode != 0:
            sys.exit(f"rollout failed:\n{(rollout.stdout + rollout.stderr)[-4000:]}")
        fleet, _ = load_fleet(inventory)
        host = fleet.brokers[0].name
        store = PkiStore(fleet_dir(LAB) / "pki")
        names = [d.id for d in fleet.devices]
        with tempfile.TemporaryDirectory(dir=work) as keys:
            start = time.monotonic()
            contexts = client_contexts(store, names, Path(keys))
            contexts_s = time.monotonic() - start
            outcome, elapsed, connected = asyncio.run(
                open_hold_count(host, names, contexts, store, args.deadline, Path(keys))
            )
    finally:
        if not args.keep_lab:
            run([sys.executable, "-m", "iotfleet", "lab", "down", "--name", LAB])
            shutil.rmtree(fleet_dir(LAB), ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    rate = outcome.accepted / elapsed if elapsed else 0.0
    print(
        f"\niotfleet connections bench ({os.cpu_count()} cores, {args.suite}, one broker,"
        f" TLS + client certificates, {IN_FLIGHT} handshakes in flight)"
    )
    print(f"  rollout of a {args.clients}-device fleet      {rollout_s:8.1f} s")
    print(f"  client TLS contexts prepared           {contexts_s:8.1f} s")
    print(
        f"  connections accepted (CONNACK 0)       {outcome.accepted:8d}"
        f"   refused {outcome.refused}, errors {outcome.errors} {outcome.first_error}"
    )
    print(
        f"  held at once, as the broker counts     {connected:8d}"
        f"   target >= {TARGET_CLIENTS}: {'met' if connected >= TARGET_CLIENTS else 'MISSED'}"
        f" (ratio {connected / TARGET_CLIENTS:.2f})"
    )
    print(f"  time to open them all                  {elapsed:8.1f} s")
    print(f"  handshakes + CONNACK per second        {rate:8.0f}")


if __name__ == "__main__":
    main()
