"""Benchmark: how a rollout grows with the fleet, hosts and control machine (issue 16).

Run as root:  .venv/bin/python bench/scale.py [--sizes 1000 10000 100000] [--brokers 5]
              [--small] [--lab NAME] [--keep-lab]
Without root: .venv/bin/python bench/scale.py --control-only [--sizes ...]

By default, for each size a fresh lab of 5 brokers whose fleet has N more devices (``iotfleet
lab up --devices N``), measured from outside with the real pyinfra CLI (bench/scale_lab.py):
PKI enroll and no-change (``deploy/pki.py``, and the same plan in-process), first and
no-change ``deploy.py``, one broker's start time (``systemctl start`` until its health
identity's mTLS CONNACK) and its ACL and password files (bytes, lines). Printed side by side
with the growth per 1,000 devices, the load, and the targets at 100,000 devices: PKI
no-change <= 2 s, no-change rollout <= 10 s, first <= 120 s. ``--small``: 100 and 1,000.

``--control-only``: a fresh fleet of N devices on 5 brokers (its own IOTFLEET_HOME, no hosts),
each phase in its own process as a pyinfra run would be:
- enroll: the first run's plan (CA, every identity, CRL, secrets) and its commit;
- no-change: a second run's plan (nothing to commit) and the material every broker's roles
  render from it (PKI files, mosquitto.conf, ACL, password files);
- the ACL and password file sizes of one broker.
Printed side by side (wall seconds, and this process's CPU seconds, which a busy machine
distorts less) with the growth per 1,000 devices.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from iotfleet.fleet.paths import state_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_PKI_NO_CHANGE_100K_S = 2.0


def _fleet(devices: int, brokers: int) -> object:
    from iotfleet.model import RawHost, build_fleet

    data = {
        "fleet_name": "bench-scale",
        "mosquitto_listeners": [{"port": 8883}, {"port": 8884, "auth": "password"}],
        "fleet_devices": [{"id": f"gw-{n:06d}"} for n in range(devices)],
        "pki_passphrase_generated": True,
    }
    hosts = [
        RawHost(f"broker-{n + 1}", ("brokers",), {**data, "ssh_hostname": f"127.0.1.{n + 1}"})
        for n in range(brokers)
    ]
    return build_fleet(hosts)


def phase(name: str, devices: int, brokers: int) -> dict[str, float]:
    """One phase in this process; its figures as JSON on stdout."""
    from iotfleet.fleet.context import FleetContext
    from iotfleet.fleet.pki import reconcile_fleet
    from iotfleet.fs.stage import Stage, staged
    from iotfleet.model import Fleet
    from iotfleet.mosquitto import layout
    from iotfleet.roles.mosquitto.render import service_files
    from iotfleet.roles.pki import broker_pki_files, health_identity_files

    fleet = _fleet(devices, brokers)
    assert isinstance(fleet, Fleet)
    start, cpu = time.perf_counter(), time.process_time()
    stage = Stage()
    ctx = FleetContext.for_fleet(fleet, stage=stage)
    with staged(stage):
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    plan = time.perf_counter() - start
    figures = {"plan_s": plan, "plan_cpu": time.process_time() - cpu}
    if name == "enroll":
        start = time.perf_counter()
        stage.commit()
        figures["commit_s"] = time.perf_counter() - start
        return figures
    assert not report.changed and stage.empty, "a second plan had something to do"
    start, cpu = time.perf_counter(), time.process_time()
    acl = passwd = 0
    for broker in fleet.brokers:
        health_identity_files(ctx.pki, broker.name)
        broker_pki_files(ctx.pki, broker.name)
        _, files = service_files(ctx, broker)
        for managed in files:
            if managed.path == layout.ACL_FILE:
                acl = len(managed.content)
            elif managed.path.startswith(layout.PASSWORD_FILE_PREFIX):
                passwd = max(passwd, len(managed.content))
    figures["render_s"] = time.perf_counter() - start
    figures["render_cpu"] = time.process_time() - cpu
    figures["acl_bytes"] = acl
    figures["passwd_bytes"] = passwd
    return figures


def _run_phase(name: str, devices: int, brokers: int, home: Path) -> dict[str, float]:
    env = {**os.environ, "IOTFLEET_HOME": str(home)}
    env.pop("IOTFLEET_PKI_PASSPHRASE", None)
    argv = [sys.executable, __file__, "--phase", name, "--sizes", str(devices)]
    out = subprocess.run(
        [*argv, "--brokers", str(brokers)], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"phase {name} at {devices} devices failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.splitlines()[-1]))


def control_main(args: argparse.Namespace) -> None:
    """The control machine's side alone, in a fleet of its own (``--control-only``)."""
    rows: list[tuple[int, dict[str, float], dict[str, float], str]] = []
    for devices in args.sizes:
        # The bench fleet's CA keys and passphrase stay under iotfleet's own state (0700),
        # never in a temp dir; removed when measured.
        home = state_root() / "bench" / f"scale-{devices}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(mode=0o700, parents=True)
        try:
            enroll = _run_phase("enroll", devices, args.brokers, home)
            again = _run_phase("no-change", devices, args.brokers, home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        one, five, _ = os.getloadavg()
        rows.append((devices, enroll, again, f"{one:.1f}/{five:.1f}"))
        print(f"  {devices} devices done", file=sys.stderr, flush=True)
    print(f"iotfleet scale bench: {args.brokers} brokers, {os.cpu_count()} CPUs")
    head = (
        f"{'devices':>8} {'enroll s':>9} {'commit s':>9} {'PKI no-change s':>16} "
        f"{'(cpu)':>7} {'render 5 s':>11} {'(cpu)':>7} {'ACL KB':>8} {'passwd KB':>10} {'load':>9}"
    )
    print(head)
    for devices, enroll, again, load in rows:
        print(
            f"{devices:>8} {enroll['plan_s']:>9.2f} {enroll['commit_s']:>9.2f} "
            f"{again['plan_s']:>16.2f} {again['plan_cpu']:>7.2f} "
            f"{again['render_s']:>11.2f} {again['render_cpu']:>7.2f} "
            f"{again['acl_bytes'] / 1024:>8.0f} {again['passwd_bytes'] / 1024:>10.1f} {load:>9}"
        )
    if len(rows) > 1:
        (d0, e0, a0, _), (d1, e1, a1, _) = rows[0], rows[-1]
        per_k = (d1 - d0) / 1000
        print(
            f"growth per 1,000 devices: enroll {(e1['plan_s'] - e0['plan_s']) / per_k:.3f} s, "
            f"PKI no-change {(a1['plan_s'] - a0['plan_s']) / per_k:.3f} s, "
            f"render {(a1['render_s'] - a0['render_s']) / per_k:.3f} s, "
            f"ACL {(a1['acl_bytes'] - a0['acl_bytes']) / per_k / 1024:.0f} KB"
        )
    largest = rows[-1]
    if largest[0] >= 100_000:
        met = largest[2]["plan_s"] <= TARGET_PKI_NO_CHANGE_100K_S
        print(
            f"target PKI no-change at {largest[0]} <= {TARGET_PKI_NO_CHANGE_100K_S} s: "
            f"{largest[2]['plan_s']:.2f} s {'met' if met else 'NOT MET'}"
        )
    print("not measured here (need hosts): rollouts first/no-change, broker start time")


def main() -> None:
    from bench.scale_lab import HEALTH_TIMEOUT_S, LAB, hosts_main, lab_plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--brokers", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="smoke run: 100 and 1,000 devices")
    parser.add_argument(
        "--control-only", action="store_true", help="no lab: the control machine's side alone"
    )
    parser.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--lab", default=LAB, help=f"the lab's name (default {LAB})")
    parser.add_argument(
        "--health-timeout", type=int, default=HEALTH_TIMEOUT_S, help="mosquitto_health_timeout"
    )
    parser.add_argument("--keep-lab", action="store_true", help="leave the last lab running")
    parser.add_argument("--phase", choices=["enroll", "no-change"], help=argparse.SUPPRESS)
    parser.add_argument("--lab-plan", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.sizes = [100, 1000]
    if args.phase:
        print(json.dumps(phase(args.phase, args.sizes[0], args.brokers)))
    elif args.lab_plan:
        print(json.dumps(lab_plan(args.lab)))
    elif args.control_only:
        control_main(args)
    else:
        hosts_main(args)


if __name__ == "__main__":
    main()
