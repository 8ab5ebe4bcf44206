"""Benchmark: enrolling a fleet with iotfleet's PKI engine vs the easy-rsa way (openssl CLI).

    .venv/bin/python bench/pki.py [--devices 10000] [--sample 50] [--gevent]

Prints, in one run and side by side:
- iotfleet: enroll N devices (fresh key + cert + index, durable, 0600) on every core (this
  process and worker interpreters), and with one process (workers=1), and a no-change
  reconcile of the same N;
- baseline: the same work one openssl process per step, like easy-rsa (genpkey, req, ca with
  an encrypted CA key and an index.txt database), on a sample, extrapolated to N.
- the floor: key+certificate pairs per second made in memory with ``cryptography`` alone (the
  same leaf shape, nothing written) by one process, times the CPUs, measured in the same run
  (before and after, averaged: load drifts); and, stricter, the same with iotfleet's own
  in-memory leaf signer (``iotfleet.pki.leaf``), which the enrollment is also compared with;
  and what as many in-memory processes as CPUs make together right now (on a shared machine
  less than CPUs x one: the share of the floor this machine can give at the moment).
``--gevent``: monkey-patch this process first, as ``pyinfra`` does, and show how many worker
processes the enrollment started (a pool that works inside real rollouts).
Targets (2-core machine): >= 3,000 identities/s, >= 100x the openssl-CLI way, no-change <= 2 s,
and enrollment >= 90% of the in-memory floor (issue 16).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if "--gevent" in sys.argv:  # before anything else is imported, like pyinfra_cli
    from gevent import monkey  # type: ignore[import-untyped]

    monkey.patch_all()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotfleet.fleet.paths import state_root
from iotfleet.pki import IdentitySpec, PkiSettings, reconcile, sign_pool
from iotfleet.pki.leaf import LeafSigner

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


def in_memory_rate(count: int) -> float:
    """Key+certificate pairs per second, one process, ``cryptography`` only: a P-256 key, a
    device leaf shaped like iotfleet's (SKI, AKI, basicConstraints, keyUsage, EKU, URI SAN)
    signed by a P-256 CA, both as PEM; nothing written. The floor enrollment is compared with."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench floor CA")])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    start_at = datetime.now(UTC)
    start = time.perf_counter()
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        name = f"gw-{i:05d}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start_at)
            .not_valid_after(start_at + timedelta(days=825))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"urn:iotfleet:device:{name}")]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert.public_bytes(serialization.Encoding.PEM)
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return count / (time.perf_counter() - start)


def leaf_signer_rate(count: int) -> float:
    """The same pairs per second through ``iotfleet.pki.leaf.LeafSigner`` in memory (what the
    engine and its workers sign with): the stricter floor."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench floor CA")])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    signer = LeafSigner(ca_key, ca_name, aki)
    now = datetime.now(UTC)
    later = now + timedelta(days=825)
    start = time.perf_counter()
    for i in range(count):
        job = (f"gw-{i:05d}", "device", "ec-p256", (), (), x509.random_serial_number(), now,
               later, None, None)  # fmt: skip
        signer.issue(job)
    return count / (time.perf_counter() - start)


def parallel_in_memory_rate(count: int, processes: int) -> float:
    """The in-memory rate of ``processes`` processes at once (summed): what this machine gives
    that many processes right now (less than processes x one when other work shares the
    cores)."""
    argv = [sys.executable, __file__, "--floor-only", str(count)]
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(float(proc.communicate()[0].split()[-1]) for proc in running)


_STARTED: list[int] = []


def _count_workers() -> None:
    """Record how many worker processes each pool starts (shown with --gevent)."""
    real = sign_pool.SignPool.__init__

    def counting(self: sign_pool.SignPool, count: int) -> None:
        real(self, count)
        _STARTED.append(len(self.workers))

    sign_pool.SignPool.__init__ = counting  # type: ignore[method-assign]


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
    parser.add_argument("--floor-sample", type=int, default=3000, help="in-memory pairs")
    parser.add_argument("--gevent", action="store_true", help="monkey-patch like pyinfra")
    parser.add_argument("--floor-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_only:
        print(f"{in_memory_rate(args.floor_only):.1f}")
        return
    _count_workers()
    # The bench CAs' keys stay under iotfleet's own state (0700), never in a temp dir.
    base = state_root() / "bench" / f"pki-{os.getpid()}"
    base.mkdir(mode=0o700, parents=True)
    try:
        floor_before = in_memory_rate(args.floor_sample)
        leaf_before = leaf_signer_rate(args.floor_sample)
        together_before = parallel_in_memory_rate(args.floor_sample, _cores())
        pool_enroll, pool_nochange = bench_iotfleet(base / "pool", args.devices, None)
        pool_workers = list(_STARTED)
        single_enroll, _ = bench_iotfleet(base / "single", args.devices, 1)
        per_cli = bench_openssl_cli(base / "openssl", args.sample)
        together_after = parallel_in_memory_rate(args.floor_sample, _cores())
        leaf_after = leaf_signer_rate(args.floor_sample)
        floor_after = in_memory_rate(args.floor_sample)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    n = args.devices
    cli_total = per_cli * n
    rate_pool, rate_single, rate_cli = n / pool_enroll, n / single_enroll, 1 / per_cli
    cpus = cores = _cores()
    together = (together_before + together_after) / 2
    per_core = (floor_before + floor_after) / 2  # measured before and after: load drifts
    floor = cores * per_core
    leaf_per_core = (leaf_before + leaf_after) / 2
    leaf_floor = cores * leaf_per_core
    mode = "gevent-patched (as in pyinfra)" if args.gevent else "not patched"
    print(f"PKI enrollment benchmark: {n} EC P-256 devices, {cpus} CPUs, load {_load()}, {mode}")
    print(
        f"floor: in-memory cryptography key+cert {per_core:.0f}/s per core "
        f"(before {floor_before:.0f}, after {floor_after:.0f}) x {cores} = {floor:.0f}/s"
    )
    print(
        f"stricter floor: in-memory iotfleet leaf signer {leaf_per_core:.0f}/s per core "
        f"(before {leaf_before:.0f}, after {leaf_after:.0f}) x {cores} = {leaf_floor:.0f}/s"
    )
    print(
        f"what {cores} processes get here now: in-memory cryptography {together:.0f}/s together "
        f"(before {together_before:.0f}, after {together_after:.0f}) = "
        f"{together / floor:.0%} of the floor"
    )
    print(
        f"worker processes started by the enrollment: {sum(pool_workers)} "
        f"(+ this process){' under gevent' if args.gevent else ''}"
    )
    print(
        f"{'what':<44}{'seconds':>10}{'ids/s':>10}{'vs openssl':>12}{'of floor':>10}"
        f"{'of strict':>11}{'of now':>8}"
    )
    rows = [
        ("iotfleet reconcile (every core)", pool_enroll, rate_pool),
        ("iotfleet reconcile (workers=1)", single_enroll, rate_single),
        (
            f"openssl CLI, easy-rsa way (x{n / args.sample:.0f} of {args.sample})",
            cli_total,
            rate_cli,
        ),
    ]
    for label, seconds, rate in rows:
        print(
            f"{label:<44}{seconds:>10.2f}{rate:>10.0f}{cli_total / seconds:>11.0f}x"
            f"{rate / floor:>10.0%}{rate / leaf_floor:>11.0%}{rate / together:>8.0%}"
        )
    print(f"{'iotfleet no-change reconcile':<44}{pool_nochange:>10.2f}")
    targets = [
        ("throughput >= 3000 ids/s", rate_pool >= 3000, f"{rate_pool:.0f}/s"),
        (
            "speed-up >= 100x openssl CLI",
            cli_total / pool_enroll >= 100,
            f"{cli_total / pool_enroll:.0f}x",
        ),
        ("no-change reconcile <= 2 s", pool_nochange <= 2.0, f"{pool_nochange:.2f}s"),
        ("enrollment >= 90% of floor", rate_pool >= 0.9 * floor, f"{rate_pool / floor:.0%}"),
        (
            "enrollment >= 90% of stricter floor",
            rate_pool >= 0.9 * leaf_floor,
            f"{rate_pool / leaf_floor:.0%}",
        ),
    ]
    for label, met, figure in targets:
        print(f"target {label:<36}{figure:>12}  {'met' if met else 'NOT MET'}")


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f} (1/5 min)"


if __name__ == "__main__":
    main()
