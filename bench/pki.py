"""Benchmark: enrolling a fleet with iotfleet's PKI engine vs the easy-rsa way (openssl CLI).

    .venv/bin/python bench/pki.py [--devices 10000] [--sample 50]

Prints, in one run and side by side:
- iotfleet: enroll N devices (fresh key + cert + index, durable, 0600) with the process pool,
  and with one process (workers=1), and a no-change reconcile of the same N;
- baseline: the same work one openssl process per step, like easy-rsa (genpkey, req, ca with
  an encrypted CA key and an index.txt database), on a sample, extrapolated to N.
Targets (2-core machine): >= 3,000 identities/s, >= 100x the openssl-CLI way, no-change <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotfleet.pki import IdentitySpec, PkiSettings, reconcile

PASSPHRASE = "bench-passphrase-not-secret"  # noqa: S105 (throwaway CA)

_CA_CONF = """\
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {dir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/certs_by_serial
default_md = sha256
policy = policy_anything
default_days = 825
unique_subject = no
copy_extensions = none
[ policy_anything ]
commonName = supplied
[ device ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, env: dict[str, str]) -> None:
    subprocess.run(["openssl", *args], check=True, env=env, capture_output=True)


def bench_openssl_cli(workdir: Path, sample: int) -> float:
    """Seconds per identity the easy-rsa way: 3 openssl processes per device."""
    env = {**os.environ, "PASS": PASSPHRASE}
    (workdir / "certs_by_serial").mkdir(parents=True)
    (workdir / "private").mkdir()
    (workdir / "reqs").mkdir()
    (workdir / "issued").mkdir()
    (workdir / "index.txt").write_text("")
    (workdir / "serial").write_text("01\n")
    conf = workdir / "openssl.cnf"
    conf.write_text(_CA_CONF.format(dir=workdir))
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        str(workdir / "private/ca.key"),
        "-passout",
        "env:PASS",
        "-out",
        str(workdir / "ca.crt"),
        "-subj",
        "/CN=bench CA",
        "-days",
        "3650",
        env=env,
    )
    start = time.perf_counter()
    for i in range(sample):
        name = f"gw-{i:05d}"
        key, req = workdir / f"private/{name}.key", workdir / f"reqs/{name}.req"
        _openssl(
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(key),
            env=env,
        )
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(req), env=env)
        _openssl(
            "ca",
            "-batch",
            "-config",
            str(conf),
            "-extensions",
            "device",
            "-rand_serial",
            "-notext",
            "-passin",
            "env:PASS",
            "-keyfile",
            str(workdir / "private/ca.key"),
            "-cert",
            str(workdir / "ca.crt"),
            "-in",
            str(req),
            "-out",
            str(workdir / f"issued/{name}.crt"),
            env=env,
        )
    return (time.perf_counter() - start) / sample


def bench_iotfleet(workdir: Path, devices: int, workers: int | None) -> tuple[float, float]:
    """(enroll seconds, no-change reconcile seconds) for ``devices`` devices."""
    os.environ["IOTFLEET_PKI_PASSPHRASE"] = PASSPHRASE
    settings = PkiSettings(state_dir=workdir / "pki", workers=workers)
    specs = [IdentitySpec(f"gw-{i:05d}", "device") for i in range(devices)]
    start = time.perf_counter()
    report = reconcile(settings, specs)
    enroll = time.perf_counter() - start
    assert len(report.issued) == devices
    start = time.perf_counter()
    again = reconcile(settings, specs)
    no_change = time.perf_counter() - start
    assert not again.changed
    key_packs = list((workdir / "pki" / "packs").glob("*.keys.pem"))
    assert key_packs and all(k.stat().st_mode & 0o077 == 0 for k in key_packs)
    return enroll, no_change


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=50, help="openssl-CLI sample size")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="iotfleet-bench-pki-"))
    try:
        pool_enroll, pool_nochange = bench_iotfleet(base / "pool", args.devices, None)
        single_enroll, _ = bench_iotfleet(base / "single", args.devices, 1)
        per_cli = bench_openssl_cli(base / "openssl", args.sample)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    n = args.devices
    cli_total = per_cli * n
    rate_pool, rate_single, rate_cli = n / pool_enroll, n / single_enroll, 1 / per_cli
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"PKI enrollment benchmark: {n} EC P-256 devices, {cpus} CPUs")
    print(f"{'what':<44}{'seconds':>10}{'ids/s':>10}{'vs openssl':>12}")
    rows = [
        ("iotfleet reconcile (process pool)", pool_enroll, rate_pool),
        ("iotfleet reconcile (workers=1)", single_enroll, rate_single),
        (
            f"openssl CLI, easy-rsa way (x{n / args.sample:.0f} of {args.sample})",
            cli_total,
            rate_cli,
        ),
    ]
    for label, seconds, rate in rows:
        print(f"{label:<44}{seconds:>10.2f}{rate:>10.0f}{cli_total / seconds:>11.0f}x")
    print(f"{'iotfleet no-change reconcile':<44}{pool_nochange:>10.2f}")
    targets = [
        ("throughput >= 3000 ids/s", rate_pool >= 3000, f"{rate_pool:.0f}/s"),
        (
            "speed-up >= 100x openssl CLI",
            cli_total / pool_enroll >= 100,
            f"{cli_total / pool_enroll:.0f}x",
        ),
        ("no-change reconcile <= 2 s", pool_nochange <= 2.0, f"{pool_nochange:.2f}s"),
    ]
    for label, met, figure in targets:
        print(f"target {label:<36}{figure:>12}  {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
