"""bench/scale.py's host side: lab fleets of N devices on 5 brokers, measured from outside.

For each size, a fresh lab (``iotfleet lab up --brokers 5 --devices N``, new hosts, no fleet
state), then, each with the real pyinfra CLI on ``inventory/lab.py``:

- PKI enroll: ``deploy/pki.py`` on the fresh state (CA, every identity, CRL, secrets);
- PKI no-change: ``deploy/pki.py`` again, and the same plan in-process (no pyinfra, no
  inventory load: what the target "PKI no-change" is about);
- first rollout: ``deploy.py`` on the new hosts (the PKI is enrolled: "enroll + first" is what
  a new fleet costs), then a no-change ``deploy.py``;
- broker start: ``systemctl stop mosquitto`` then ``start`` on one broker, timed from the start
  (the host's clock, which is the control machine's: nspawn hosts share its kernel) until its
  health identity is accepted over TLS (mTLS on 8883, a CONNACK) from the control machine;
- the ACL and password files of that broker (``wc -lc`` on the host).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.rollout import REPO, iotfleet, timed_rollout
from iotfleet.check.tls_context import client_context
from iotfleet.fleet.paths import fleet_dir
from iotfleet.lab.state import lab_paths, load_lab
from iotfleet.model.own_identities import health_identity_name
from iotfleet.mosquitto import layout
from iotfleet.pki import PkiStore

LAB = "scale-bench"
INVENTORY = "inventory/lab.py"
PKI_DEPLOY = "deploy/pki.py"
CERT_PORT = 8883
# A broker with 100,000 devices' ACL may take longer than the default 20 s to answer its first
# health check; the bench gives every size the same generous limit (it times, not tests).
HEALTH_TIMEOUT_S = 300
START_TIMEOUT_S = 600.0

# Issue 16, at 100,000 devices on 5 brokers.
# "first" is what a new fleet costs: the PKI enroll and the first rollout on new hosts.
TARGETS = {"pki_again_s": 2.0, "again_s": 10.0, "enroll_first_s": 120.0}


@dataclass(frozen=True)
class FileSize:
    lines: int
    bytes: int


def parse_wc(text: str) -> dict[str, FileSize]:
    """``{path: FileSize}`` from ``wc -lc FILE...`` (its ``total`` line left out)."""
    sizes: dict[str, FileSize] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] != "total" and fields[0].isdigit():
            sizes[fields[2]] = FileSize(int(fields[0]), int(fields[1]))
    return sizes


def changed_operations(totals: str) -> int:
    """Changed operations in pyinfra's ``Grand total`` (operations, changed, errors, no change:
    ``-`` is none); -1 when there is no such line."""
    fields = totals.split()
    if len(fields) != 4:
        return -1
    return 0 if fields[1] == "-" else int(fields[1])


def broker_files(sizes: dict[str, FileSize]) -> dict[str, FileSize]:
    """``{"acl": ..., "passwd": ...}``: the ACL file, and the largest password file."""
    acl = sizes.get(layout.ACL_FILE, FileSize(0, 0))
    passwords = [s for p, s in sizes.items() if p.startswith(layout.PASSWORD_FILE_PREFIX)]
    return {"acl": acl, "passwd": max(passwords, key=lambda s: s.bytes, default=FileSize(0, 0))}


class Shell:
    """Commands on the lab's hosts over ssh, with the lab's key and strict host keys."""

    def __init__(self, lab: str) -> None:
        paths = lab_paths(lab)
        self.hosts = {h.fqdn: h.address for h in load_lab(lab).hosts}
        self._base = [
            "ssh", "-F", "/dev/null", "-i", str(paths.ssh_key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={paths.known_hosts}",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def run(self, host: str, script: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [*self._base, f"root@{self.hosts[host]}", script],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"on {host}: {script!r} failed ({out.returncode}): {out.stderr[-2000:]}")
        return out.stdout


def file_sizes(shell: Shell, host: str) -> dict[str, FileSize]:
    """The broker's ACL and (largest) password file."""
    script = f"wc -lc {layout.ACL_FILE} {layout.PASSWORD_FILE_PREFIX}*"
    return broker_files(parse_wc(shell.run(host, script)))


def _accepted(host: str, ca: bytes, cert: bytes, key: bytes, client_id: str) -> bool:
    """One mTLS MQTT connection: True on a successful CONNACK."""
    answer: list[bool] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.tls_set_context(client_context(ca, certificate_pem=cert, private_key_pem=key))
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.append(not reason.is_failure)
    try:
        client.connect(host, CERT_PORT, keepalive=30)
        deadline = time.monotonic() + 10
        while not answer and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        client.disconnect()
    except OSError:  # refused, reset, TLS handshake cut short: not up yet
        return False
    return bool(answer and answer[0])


def broker_start_seconds(shell: Shell, lab: str, host: str) -> float:
    """Seconds from ``systemctl start mosquitto`` until its health identity gets a CONNACK."""
    store = PkiStore(fleet_dir(lab) / "pki")
    name = health_identity_name(host)
    ca, cert, key = store.ca_chain_pem(), store.certificate_pem(name), store.private_key_pem(name)
    if not _accepted(host, ca, cert, key, name):
        sys.exit(f"{host}: the health identity is not accepted before the restart")
    # date runs on the host, whose clock is this machine's (one kernel): the start's own time.
    out = shell.run(
        host, "systemctl stop mosquitto && date +%s%N && systemctl start --no-block mosquitto"
    )
    started = int(out.split()[0])
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _accepted(host, ca, cert, key, name):
            return (time.time_ns() - started) / 1e9
        time.sleep(0.05)
    return math.nan


def lab_plan(lab: str) -> dict[str, float]:
    """The lab fleet's PKI plan, in this process, on enrolled state: it must change nothing."""
    from iotfleet.check.plan import read_inventory
    from iotfleet.fleet.context import FleetContext
    from iotfleet.fleet.pki import reconcile_fleet
    from iotfleet.fs.stage import Stage, staged
    from iotfleet.model import build_fleet

    os.environ["IOTFLEET_LAB"] = lab
    fleet = build_fleet(read_inventory(REPO / INVENTORY))
    start, cpu = time.perf_counter(), time.process_time()
    stage = Stage()
    ctx = FleetContext.for_fleet(fleet, stage=stage)
    with staged(stage):
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    figures = {"plan_s": time.perf_counter() - start, "plan_cpu": time.process_time() - cpu}
    assert not report.changed and stage.empty, "a second plan had something to do"
    return figures


def _in_process_plan(lab: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--lab-plan", "--lab", lab],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"in-process PKI plan failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.splitlines()[-1]))


def fresh_lab(lab: str, brokers: int, devices: int, suite: str) -> float:
    """Lab ``lab`` down and up with ``brokers`` new hosts and ``devices`` devices, no fleet
    state; the seconds ``lab up`` took."""
    iotfleet("lab", "down", "--name", lab, lab=lab)
    shutil.rmtree(fleet_dir(lab), ignore_errors=True)
    start = time.monotonic()
    up = iotfleet(
        "lab", "up", "--name", lab, "--brokers", str(brokers), "--devices", str(devices),
        "--suite", suite, lab=lab,
    )  # fmt: skip
    if up.returncode != 0:
        sys.exit(f"lab up --brokers {brokers} --devices {devices} failed:\n{up.stderr}")
    return time.monotonic() - start


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def measure(
    lab: str, brokers: int, devices: int, suite: str, health_timeout: int
) -> dict[str, Any]:
    """Every figure of one size (see the module's docstring), on a fresh lab."""
    row: dict[str, Any] = {"devices": devices, "load_before": load()}
    row["lab_up_s"] = fresh_lab(lab, brokers, devices, suite)
    data = ("--data", f"mosquitto_health_timeout={health_timeout}")
    row["enroll_s"], _, _ = timed_rollout(PKI_DEPLOY, *data, inventory=INVENTORY, lab=lab)
    row["pki_again_s"], _, _ = timed_rollout(PKI_DEPLOY, *data, inventory=INVENTORY, lab=lab)
    plan = _in_process_plan(lab)
    row["plan_s"], row["plan_cpu"] = plan["plan_s"], plan["plan_cpu"]
    row["first_s"], _, _ = timed_rollout("deploy.py", *data, inventory=INVENTORY, lab=lab)
    row["again_s"], totals, _ = timed_rollout("deploy.py", *data, inventory=INVENTORY, lab=lab)
    row["again_changed"] = changed_operations(totals)
    shell = Shell(lab)
    host = sorted(shell.hosts)[0]
    row["start_s"] = broker_start_seconds(shell, lab, host)
    files = file_sizes(shell, host)
    row["acl_lines"], row["acl_bytes"] = files["acl"].lines, files["acl"].bytes
    row["passwd_lines"], row["passwd_bytes"] = files["passwd"].lines, files["passwd"].bytes
    row["load"] = load()
    return row


# --- the table (tests/unit/test_bench_scale.py) ---------------------------------------------

COLUMNS: list[tuple[str, str, str]] = [
    # (key, heading, format)
    ("devices", "devices", "d"),
    ("lab_up_s", "lab up s", ".1f"),
    ("enroll_s", "PKI enroll s", ".1f"),
    ("pki_again_s", "PKI no-change s", ".2f"),
    ("plan_s", "(in-process)", ".2f"),
    ("first_s", "first s", ".1f"),
    ("enroll_first_s", "enroll+first s", ".1f"),
    ("again_s", "no-change s", ".1f"),
    ("again_changed", "(changed ops)", "d"),
    ("start_s", "broker start s", ".2f"),
    ("acl_lines", "ACL lines", "d"),
    ("acl_bytes", "ACL bytes", "d"),
    ("passwd_lines", "passwd lines", "d"),
    ("passwd_bytes", "passwd bytes", "d"),
    ("load", "load 1/5m", "s"),
]


def _cell(value: Any, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, fmt)


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per size, then the growth per device between the smallest and the largest
    size (seconds and bytes per 1,000 devices), each figure under its heading."""
    rows = [{**r, "enroll_first_s": r["enroll_s"] + r["first_s"]} for r in rows]
    widths = [max(len(h), 8) for _, h, _ in COLUMNS]
    lines = [" ".join(h.rjust(w) for (_, h, _), w in zip(COLUMNS, widths, strict=True))]
    for r in rows:
        cells = [_cell(r[k], f) for k, _, f in COLUMNS]
        lines.append(" ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        per_k = (large["devices"] - small["devices"]) / 1000
        cells = ["per 1k"]
        for k, _, f in COLUMNS[1:]:
            if f == "s":
                cells.append("")
            else:
                growth = (large[k] - small[k]) / per_k if per_k else math.nan
                cells.append(_cell(growth, ".3f" if f.endswith("f") else ".0f"))
        lines.append(" ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return lines


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets, against the size with 100,000 devices or more (if measured)."""
    lines = [
        f"the no-change rollout of {r['devices']} changed {r['again_changed']} operation(s):"
        " not a no-change figure"
        for r in rows
        if r["again_changed"] != 0
    ]
    large = [r for r in rows if r["devices"] >= 100_000]
    if not large:
        return [
            *lines,
            "targets (at 100,000 devices): PKI no-change <= 2 s, no-change rollout <= 10 s, "
            "first <= 120 s: not measured at that size",
        ]
    r = {**large[-1], "enroll_first_s": large[-1]["enroll_s"] + large[-1]["first_s"]}
    names = {
        "pki_again_s": "PKI no-change (pyinfra)",
        "again_s": "no-change rollout",
        "enroll_first_s": "first (PKI enroll + rollout)",
    }
    for key, limit in TARGETS.items():
        lines.append(
            f"target {names[key]} at {r['devices']} <= {limit:g} s: "
            f"{r[key]:.2f} s {_met(r[key], limit)}"
        )
    pki, first = TARGETS["pki_again_s"], TARGETS["enroll_first_s"]
    lines.append(
        f"  (PKI no-change in-process: {r['plan_s']:.2f} s {_met(r['plan_s'], pki)};"
        f" the rollout alone, PKI enrolled: {r['first_s']:.1f} s {_met(r['first_s'], first)})"
    )
    return lines


def _met(value: float, limit: float) -> str:
    return "met" if value <= limit else "NOT MET"


def hosts_main(args: Any) -> None:
    """Every size on a fresh lab; the table (and the figures as JSON lines) on stdout."""
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (it boots a lab); --control-only does not")
    rows: list[dict[str, Any]] = []
    try:
        for devices in args.sizes:
            row = measure(args.lab, args.brokers, devices, args.suite, args.health_timeout)
            rows.append(row)
            print(f"  {json.dumps(row)}", flush=True)
    finally:
        if not args.keep_lab:
            iotfleet("lab", "down", "--name", args.lab, lab=args.lab)
            shutil.rmtree(fleet_dir(args.lab), ignore_errors=True)
    print(
        f"\niotfleet scale bench: lab fleets on {args.brokers} brokers ({args.suite}), "
        f"{os.cpu_count()} CPUs; `uptime`: {Path('/proc/loadavg').read_text().strip()}"
    )
    for line in table(rows):
        print(f"  {line}")
    print(
        "  PKI: deploy/pki.py (real pyinfra CLI), (in-process) = the same plan without pyinfra;"
        " first = deploy.py on new hosts after the enroll; broker start = systemctl start"
        " until the health identity's mTLS CONNACK"
    )
    for line in verdicts(rows):
        print(f"  {line}")
