"""Benchmark of a multi-site fleet (issue 15): edge brokers in sites, bridged to core brokers.

Run as root:  .venv/bin/python -m bench.sites [--devices 10000] [--sites 4] [--edges-per-site 5]
              [--cores 2] [--publishers 200] [--rates 1000 0] [--seconds 30] [--small]

Brings up a lab of cores + sites x edges brokers (default 2 + 4 x 5 = 22), writes a fleet of
``--devices`` devices sharded over the sites (device i on site i mod sites) and times the first
and a no-change ``pyinfra -y <inventory> deploy.py`` (bench/rollout.py's helpers).

Then telemetry, end to end, for each offered rate (messages/s in total; 0 = as fast as the
control machine generates, at most ``WINDOW`` QoS 1 messages in flight per device):

- **sites**: ``--publishers`` devices, each a real mTLS paho client with its own fleet
  certificate, spread evenly over the edges of their site, publish QoS 1 telemetry carrying a
  timestamp; one consumer on the first core (the bridges' main core) counts what arrives and
  the latency device -> core;
- **one broker** (the baseline): the same devices publish the same load straight to the first
  core, which then bridges nothing (no edge traffic): one broker with the 10,000-device ACL and
  a consumer on it.

Beside each run: broker CPU (mosquitto's utime + stime from /proc over ssh) on the busiest
edge and on the cores, bytes the busiest edge sent (its bridge link), and the control
machine's CPU (this process, the whole machine). The verdict names the first resource near its
limit. ``--small`` (2 sites x 2 edges + 2 cores, 400 devices, 10 s runs) takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.rollout import fresh_lab, iotfleet, timed_rollout
from iotfleet.check.plan import read_inventory
from iotfleet.check.tls_context import client_context
from iotfleet.fleet.paths import fleet_dir, state_root
from iotfleet.lab.errors import LabError
from iotfleet.lab.state import lab_paths, load_lab
from iotfleet.model import build_fleet
from iotfleet.pki import PkiStore

LAB = "bsites-bench"
PORT = 8883  # certificate listener: devices, the consumer, the edges' bridges
ADMIN = "bsites-admin"
WINDOW = 10  # QoS 1 messages in flight per publisher when unpaced
BRIDGE_TIMEOUT = 180.0  # a bridge reconnects after a back-off plus TLS
BUSY = 80.0  # % of a core (or of the machine) counted as "at its limit"
CLK_TCK = os.sysconf("SC_CLK_TCK")

INVENTORY = '''
"""Bench fleet: the {lab} lab's hosts, all brokers (group_data/sites.py: the topology)."""
from iotfleet.lab.inventory import lab_inventory_groups

brokers = lab_inventory_groups("{lab}")["brokers"]
'''

GROUP_DATA = '''
"""Bench fleet: cores, sites and devices from topology.json (written by bench/sites.py)."""
import json
from pathlib import Path

__all__ = [
    "fleet_clients", "fleet_core_brokers", "fleet_devices", "fleet_name", "fleet_sites",
    "mosquitto_health_timeout", "pki_passphrase_generated",
]

_topology = json.loads((Path(__file__).parent / "topology.json").read_text())
fleet_name = "{lab}"
fleet_core_brokers = _topology["fleet_core_brokers"]
fleet_sites = _topology["fleet_sites"]
fleet_devices = _topology["fleet_devices"]
fleet_clients = [{{"name": "{admin}", "roles": ["admin"]}}]
pki_passphrase_generated = True
# A core loads every bridge's ACL (its site's device rules) and every device's: it takes more
# than the default 20 s to answer its first health check at 10,000 devices (see docs/sites.md).
mosquitto_health_timeout = {health_timeout}
'''


# --- pure helpers (tests/unit/test_bench_sites.py) ----------------------------------------


@dataclass(frozen=True)
class Topology:
    cores: list[str]
    sites: dict[str, list[str]]  # site name -> its edges, in order
    devices: dict[str, str]  # device id -> site name

    def data(self) -> dict[str, Any]:
        """The inventory data (``fleet_core_brokers``, ``fleet_sites``, ``fleet_devices``)."""
        return {
            "fleet_core_brokers": self.cores,
            "fleet_sites": [{"name": s, "edges": edges} for s, edges in self.sites.items()],
            "fleet_devices": [{"id": d, "site": s} for d, s in self.devices.items()],
        }

    def placement(self, publishers: int) -> list[tuple[str, str]]:
        """``(device, edge)`` for each publisher: round robin over sites, then their edges."""
        by_site: dict[str, list[str]] = {s: [] for s in self.sites}
        for device, site in self.devices.items():
            by_site[site].append(device)
        names = list(self.sites)
        placed = []
        for j in range(publishers):
            site = names[j % len(names)]
            k = j // len(names)
            if k >= len(by_site[site]):
                raise ValueError(f"site {site} has only {len(by_site[site])} devices")
            edges = self.sites[site]
            placed.append((by_site[site][k], edges[k % len(edges)]))
        return placed


def build_topology(
    hosts: Sequence[str], *, cores: int, sites: int, edges_per_site: int, devices: int
) -> Topology:
    """The first ``cores`` hosts are cores, the next ``sites * edges_per_site`` the sites'
    edges (site s1 first); device ``bsites-<i>`` is on site ``i mod sites``."""
    needed = cores + sites * edges_per_site
    if len(hosts) < needed:
        raise ValueError(f"{needed} hosts needed, {len(hosts)} given")
    if min(cores, sites, edges_per_site, devices) < 1:
        raise ValueError("cores, sites, edges per site and devices must be at least 1")
    names = [f"s{n + 1}" for n in range(sites)]
    edges = list(hosts[cores:needed])
    return Topology(
        cores=list(hosts[:cores]),
        sites={
            s: edges[n * edges_per_site : (n + 1) * edges_per_site] for n, s in enumerate(names)
        },
        devices={f"bsites-{i:05d}": names[i % sites] for i in range(devices)},
    )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def cpu_percent(ticks: int, seconds: float) -> float:
    """Clock ticks spent over ``seconds`` as % of one core."""
    return 100.0 * ticks / CLK_TCK / seconds if seconds > 0 else 0.0


# --- the lab's hosts over ssh ---------------------------------------------------------------

PROBE = (
    "t=0; for p in $(pidof mosquitto); do set -- $(cut -d' ' -f14,15 /proc/$p/stat);"
    " t=$((t+$1+$2)); done; echo $t;"
    " cat /sys/class/net/[!l]*/statistics/tx_bytes | awk '{b+=$1} END {print b+0}'"
)


@dataclass(frozen=True)
class HostSample:
    ticks: int  # mosquitto's utime + stime
    tx_bytes: int  # bytes sent on the host's interfaces (not loopback)


class LabShell:
    def __init__(self, lab: str) -> None:
        state = load_lab(lab)
        paths = lab_paths(lab)
        self.addresses = {h.fqdn: h.address for h in state.hosts}
        self._base = [
            "ssh", "-F", "/dev/null", "-i", str(paths.ssh_key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={paths.known_hosts}",
            "-o", "ConnectTimeout=5",
        ]  # fmt: skip

    def sample(self, host: str) -> HostSample:
        out = subprocess.run(
            [*self._base, f"root@{self.addresses[host]}", PROBE],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout.split()  # fmt: skip
        return HostSample(int(out[0]), int(out[1])) if len(out) == 2 else HostSample(0, 0)

    def restart_seconds(self, host: str) -> float:
        """Seconds from ``systemctl restart mosquitto`` until the certificate listener listens."""
        script = (
            "s=$(date +%s%N); systemctl restart mosquitto;"
            f' until ss -Htln "sport = :{PORT}" | grep -q .; do sleep 0.1; done;'
            " echo $(( $(date +%s%N) - s ))"
        )
        out = subprocess.run(
            [*self._base, f"root@{self.addresses[host]}", f"timeout 300 sh -c '{script}'"],
            capture_output=True, text=True, timeout=330, check=False,
        ).stdout.strip()  # fmt: skip
        return int(out) / 1e9 if out.isdigit() else math.nan

    def samples(self, hosts: Sequence[str]) -> dict[str, HostSample]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(hosts, pool.map(self.sample, hosts), strict=True))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole control machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# --- telemetry ------------------------------------------------------------------------------


@dataclass
class Endpoint:
    address: str
    certificate_pem: bytes
    private_key_pem: bytes


def tls_client(ca_pem: bytes, client_id: str, endpoint: Endpoint) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.tls_set_context(
        client_context(
            ca_pem,
            certificate_pem=endpoint.certificate_pem,
            private_key_pem=endpoint.private_key_pem,
        )
    )
    client.max_queued_messages_set(WINDOW * 4)
    return client


def connect(client: mqtt.Client, name: str, address: str, timeout: float = 60) -> None:
    """Connect and start the client's network thread (paho retries by itself); exits the bench
    saying why if there is no successful CONNACK within ``timeout``."""
    answers: list[str] = []
    connected = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        answers.append(str(reason))
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect_async(address, PORT, keepalive=60)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        why = ", ".join(answers) or "no CONNACK"
        raise SystemExit(f"{name} was not accepted by {address} in {timeout:.0f} s ({why})")


@dataclass
class Consumer:
    """Latencies (ms) of telemetry received, by the send time stamped into each message."""

    latencies: list[float] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)  # time.monotonic_ns bounds of the measured window
    in_window: int = 0
    seen: set[str] = field(default_factory=set)  # topics (warm-up)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic_ns()
        try:
            sent = int(message.payload.split(b" ", 1)[0])
        except ValueError:
            return
        with self.lock:
            if sent == 0:
                self.seen.add(message.topic)
            elif self.window[0] <= sent <= self.window[1]:
                self.in_window += 1
                self.latencies.append((now - sent) / 1e6)


def consumer_process(conn: Connection, ca: bytes, admin: Endpoint, filters: list[str]) -> None:
    """The core's consumer in a process of its own (its own interpreter lock, away from the
    publishers'); answers ``seen``, ``window``, ``stop`` from the bench over ``conn``."""
    consumer = Consumer()
    sub = tls_client(ca, f"{ADMIN}-consumer", admin)
    sub.on_message = consumer.on_message
    connect(sub, ADMIN, admin.address)
    for topic_filter in filters:
        sub.subscribe(topic_filter, qos=1)
    conn.send("ready")
    while (request := conn.recv())[0] != "stop":
        with consumer.lock:
            if request[0] == "window":
                consumer.window = request[1]
            conn.send(set(consumer.seen))
    sub.disconnect()
    sub.loop_stop()
    with consumer.lock:
        conn.send((consumer.in_window, consumer.latencies))


class Publisher:
    def __init__(self, client: mqtt.Client, topic: str) -> None:
        self.client, self.topic = client, topic
        self.outstanding = 0
        self.sent = 0
        self.lock = threading.Lock()
        client.on_publish = self._acked

    def _acked(self, *_args: object) -> None:
        with self.lock:
            self.outstanding -= 1

    def publish(self, stamp: int) -> bool:
        with self.lock:
            if self.outstanding >= WINDOW:
                return False
            self.outstanding += 1
        self.client.publish(self.topic, b"%d 21.5" % stamp, qos=1)
        self.sent += 1
        return True


@dataclass(frozen=True)
class LoadResult:
    offered: float  # messages/s asked for (0 = unpaced)
    sent: float  # messages/s the publishers got out
    received: float  # messages/s the core consumer got, of those sent in the window
    p50_ms: float
    p99_ms: float
    busiest_edge_cpu: float  # % of a core
    core_cpu: list[float]
    edge_tx_mb_s: float  # busiest edge's bytes out (its bridge link), MB/s
    bench_cpu: float  # this process, % of a core
    machine_cpu: float  # whole control machine, % of all cores

    def ceiling(self) -> str:
        """The first resource at its limit, or a note that none was."""
        if self.offered and self.received >= 0.95 * self.offered:
            return "none: the offered rate was delivered"
        if self.machine_cpu >= BUSY or self.bench_cpu >= BUSY:
            return "control machine (load generator + consumer)"
        if max(self.core_cpu, default=0) >= BUSY:
            return "core broker CPU"
        if self.busiest_edge_cpu >= BUSY:
            return "edge broker CPU"
        if self.received < 0.95 * self.sent:
            return "bridge link / delivery (received < sent)"
        return "none reached"


def run_load(
    *,
    placement: list[tuple[str, str]],
    consumer_at: str,
    topic_of: dict[str, str],
    store: PkiStore,
    shell: LabShell,
    edges: list[str],
    cores: list[str],
    rate: float,
    seconds: float,
    warm_up: bool,
) -> LoadResult:
    """One run: connect consumer and publishers, warm up, publish for ``seconds``, drain."""
    ca = store.ca_chain_pem()
    addr = shell.addresses
    roots = {t.rsplit("/", 2)[0].rsplit("/", 1)[0] for t in topic_of.values()}
    admin = Endpoint(addr[consumer_at], store.certificate_pem(ADMIN), store.private_key_pem(ADMIN))
    spawn = multiprocessing.get_context("spawn")  # this process has threads: no fork
    conn, child_conn = spawn.Pipe()
    filters = [f"{root}/+/telemetry/#" for root in sorted(roots)]
    child = spawn.Process(target=consumer_process, args=(child_conn, ca, admin, filters))
    child.start()
    if not conn.poll(60):
        child.kill()
        raise SystemExit(f"the consumer did not connect to {consumer_at}")
    conn.recv()

    def ask(*request: object) -> Any:
        conn.send(request)
        return conn.recv()

    publishers: list[Publisher] = []
    try:
        for device, broker in placement:
            ep = Endpoint(
                addr[broker], store.certificate_pem(device), store.private_key_pem(device)
            )
            client = tls_client(ca, device, ep)
            publishers.append(Publisher(client, topic_of[device]))
            connect(client, device, ep.address)
        if warm_up:  # until every edge's bridge carries (zero-stamped messages are not counted)
            deadline = time.monotonic() + BRIDGE_TIMEOUT
            want = {p.topic for p in publishers}
            while not want <= (seen := ask("seen")) and time.monotonic() < deadline:
                for p in publishers:
                    if p.topic not in seen:
                        p.publish(0)
                time.sleep(2)
            if missing := want - ask("seen"):
                print(f"  note: {len(missing)} publishers never reached the core")
        else:
            time.sleep(1)
        before = shell.samples([*cores, *edges])
        busy0, total0 = machine_ticks()
        own0 = os.times()
        start = time.monotonic_ns()
        window = (start, start + int(seconds * 1e9))
        ask("window", window)
        sent0 = sum(p.sent for p in publishers)
        interval = len(publishers) / rate if rate else 0.0  # per publisher, seconds
        next_at = time.perf_counter()
        while time.monotonic_ns() < window[1]:
            out = sum(p.publish(time.monotonic_ns()) for p in publishers)
            if interval:
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
            elif not out:
                time.sleep(0.0005)  # every publisher's window is full
        elapsed = (time.monotonic_ns() - start) / 1e9
        sent = sum(p.sent for p in publishers) - sent0
        own1 = os.times()
        busy1, total1 = machine_ticks()
        after = shell.samples([*cores, *edges])
        time.sleep(5)  # drain: what was sent in the window and is still on its way
        in_window, latencies = ask("stop")
    finally:
        for p in publishers:
            p.client.disconnect()
            p.client.loop_stop()
        child.join(10)
        if child.is_alive():
            child.kill()
    cpu = {h: cpu_percent(after[h].ticks - before[h].ticks, elapsed) for h in after}
    tx = {h: (after[h].tx_bytes - before[h].tx_bytes) / elapsed / 1e6 for h in edges}
    own = (own1.user - own0.user + own1.system - own0.system) / elapsed * 100
    return LoadResult(
        offered=rate,
        sent=sent / elapsed,
        received=in_window / seconds,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        busiest_edge_cpu=max((cpu[h] for h in edges), default=0.0),
        core_cpu=[cpu[h] for h in cores],
        edge_tx_mb_s=max(tx.values(), default=0.0),
        bench_cpu=own,
        machine_cpu=100.0 * (busy1 - busy0) / max(1, total1 - total0),
    )


# --- the bench ------------------------------------------------------------------------------


def write_inventory(directory: Path, lab: str, topology: Topology, health_timeout: int) -> Path:
    (directory / "group_data").mkdir(parents=True, exist_ok=True)
    (directory / "sites.py").write_text(textwrap.dedent(INVENTORY.format(lab=lab)))
    (directory / "group_data" / "sites.py").write_text(
        textwrap.dedent(GROUP_DATA.format(lab=lab, admin=ADMIN, health_timeout=health_timeout))
    )
    (directory / "group_data" / "topology.json").write_text(json.dumps(topology.data()))
    return directory / "sites.py"


def lab_running(lab: str, brokers: int) -> bool:
    try:
        return len(load_lab(lab).hosts) == brokers
    except LabError:  # no such lab
        return False


def row(name: str, r: LoadResult) -> str:
    offered = "max" if not r.offered else f"{r.offered:.0f}"
    cores = "/".join(f"{c:.0f}" for c in r.core_cpu)
    return (
        f"  {name:<10} {offered:>7} {r.sent:>8.0f} {r.received:>9.0f} {r.p50_ms:>8.1f}"
        f" {r.p99_ms:>8.1f} {r.busiest_edge_cpu:>7.0f} {cores:>9} {r.edge_tx_mb_s:>8.2f}"
        f" {r.bench_cpu:>7.0f} {r.machine_cpu:>6.0f}  {r.ceiling()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--edges-per-site", type=int, default=5)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=200)
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--small", action="store_true", help="2 x 2 edges, 2 cores, 400 devices")
    parser.add_argument(
        "--health-timeout", type=int, default=300, help="mosquitto_health_timeout (s) of the fleet"
    )
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--lab", default=LAB)
    parser.add_argument(
        "--reuse-lab", action="store_true", help="use the lab if it has the size (fresh hosts)"
    )
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    parser.add_argument("--no-load", action="store_true", help="rollouts only")
    args = parser.parse_args()
    if args.small:
        args.devices, args.sites, args.edges_per_site, args.cores = 400, 2, 2, 2
        args.publishers, args.seconds, args.rates = 20, 10.0, [200.0, 0.0]
    if os.geteuid() != 0:
        sys.exit("bench/sites.py needs root (it boots a lab)")
    brokers = args.cores + args.sites * args.edges_per_site
    lab = args.lab
    work = state_root() / "bench" / lab
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    results: list[tuple[str, LoadResult]] = []
    restarts: dict[str, float] = {}
    try:
        started = time.monotonic()
        if args.reuse_lab and lab_running(lab, brokers):
            shutil.rmtree(fleet_dir(lab), ignore_errors=True)
        else:
            fresh_lab(brokers, args.suite, lab=lab)
        up_s = time.monotonic() - started
        hosts = [h.fqdn for h in load_lab(lab).hosts]
        topology = build_topology(
            hosts,
            cores=args.cores,
            sites=args.sites,
            edges_per_site=args.edges_per_site,
            devices=args.devices,
        )
        inventory = str(write_inventory(work / "inventory", lab, topology, args.health_timeout))
        first_s, _, _ = timed_rollout(inventory=inventory, lab=lab)
        print(f"  first rollout: {first_s:.1f} s", flush=True)
        again_s, totals, _ = timed_rollout(inventory=inventory, lab=lab)
        print(f"  no-change rollout: {again_s:.1f} s ({totals})", flush=True)
        if not args.no_load:
            fleet = build_fleet(read_inventory(inventory))
            topic_of = {d.id: f"{fleet.topic_prefix(d)}/telemetry/bench" for d in fleet.devices}
            store = PkiStore(fleet_dir(lab) / "pki")
            shell = LabShell(lab)
            edges = [e for es in topology.sites.values() for e in es]
            placement = topology.placement(args.publishers)
            core = topology.cores[0]
            for rate in args.rates:
                for name, where, warm in (
                    ("sites", placement, True),
                    ("one broker", [(d, core) for d, _ in placement], False),
                ):
                    result = run_load(
                        placement=where, consumer_at=core, topic_of=topic_of, store=store,
                        shell=shell, edges=edges if name == "sites" else [],
                        cores=topology.cores if name == "sites" else [core], rate=rate,
                        seconds=args.seconds, warm_up=warm,
                    )  # fmt: skip
                    print(row(name, result), flush=True)
                    results.append((name, result))
            restarts = {
                "core": shell.restart_seconds(core),
                "edge": shell.restart_seconds(edges[0]),
            }
    finally:
        if not args.keep_lab:
            iotfleet("lab", "down", "--name", lab, lab=lab)
            shutil.rmtree(fleet_dir(lab), ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    print(
        f"\niotfleet sites bench ({os.cpu_count()} cores, {args.suite}; {args.devices} devices,"
        f" {args.sites} sites x {args.edges_per_site} edges + {args.cores} cores ="
        f" {brokers} brokers; load before/after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
    )
    print(f"  lab up {up_s:.1f} s, first rollout {first_s:.1f} s, no-change {again_s:.1f} s"
          f" ({totals})")  # fmt: skip
    if restarts:
        print(
            f"  broker restart until listening: core {restarts['core']:.1f} s"
            f" ({args.devices} devices, {args.sites * args.edges_per_site} bridges' ACLs),"
            f" edge {restarts['edge']:.1f} s ({args.devices // args.sites} devices + its bridge)"
        )
    if not results:
        return
    print(
        f"\n  telemetry: {args.publishers} devices publishing QoS 1 for {args.seconds:.0f} s,"
        " consumer on core 1 (baseline: the same devices and consumer on core 1 alone)"
    )
    print(
        f"  {'':<10} {'offered':>7} {'sent/s':>8} {'recvd/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'edge%':>7} {'core%':>9} {'edgeMB/s':>8} {'bench%':>7} {'host%':>6}  ceiling"
    )
    for name, result in results:
        print(row(name, result))
    for (_, sites), (_, one) in zip(results[::2], results[1::2], strict=True):
        offered = "max" if not sites.offered else f"{sites.offered:.0f}/s"
        print(
            f"  offered {offered}: sites deliver {sites.received / max(one.received, 1e-9):.2f}x"
            f" the one broker's rate, p50 {sites.p50_ms / max(one.p50_ms, 1e-9):.2f}x,"
            f" p99 {sites.p99_ms / max(one.p99_ms, 1e-9):.2f}x"
        )


if __name__ == "__main__":
    main()
