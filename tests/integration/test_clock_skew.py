"""A control machine whose clock ran 5 days ahead for one rollout (issue 12): the CRL it signed
is dated in the future. The next rollouts at the right time refuse to sign and say why, before
any broker is touched; `pki status` flags the CRL; re-signing it with the clock right converges
the fleet. Time is moved with the real faketime (libfaketime) around the real pyinfra."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time

import pytest
from cryptography import x509

from iotfleet.mosquitto import layout
from tests.integration.conftest import PYINFRA, REPO, LabFactory, RunningLab
from tests.support.lab_fleet import lab_context
from tests.support.rollout import Rollout, run_iotfleet, run_pyinfra

pytestmark = pytest.mark.lab

MANAGED = (layout.CRL, layout.SERVER_CERT, layout.CA_CHAIN, layout.CONFIG)


def managed_digests(lab: RunningLab) -> dict[str, str]:
    listing = lab.ssh(lab.hosts[0], "sha256sum " + " ".join(MANAGED)).stdout
    return {line.split()[1]: line.split()[0] for line in listing.splitlines()}


def state_digests(lab: RunningLab) -> dict[str, str]:
    root = lab_context(lab.name).pki_settings.state_dir
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def skewed_rollout(lab: RunningLab, offset: str) -> Rollout:
    assert shutil.which("faketime"), "faketime is missing: scripts/install-system-deps.sh"
    result = subprocess.run(
        ["faketime", "-f", offset, PYINFRA, "-y", "inventory/lab.py", "deploy.py"],
        cwd=REPO, env=lab.env(), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    return Rollout(result.returncode, result.stdout + result.stderr, 0, 0, 0, 0)


def test_a_rollout_with_the_clock_ahead_is_detected_and_repaired(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(suite="bookworm", brokers=1)
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()

    skewed = skewed_rollout(lab, "+5d")
    crl = x509.load_pem_x509_crl(lab_context(lab.name).pki.crl_pem())
    ahead = crl.last_update_utc.timestamp() - time.time()
    assert ahead > 4.9 * 86400, (ahead, skewed.explain())  # the skewed run re-signed it

    # At the right time: refused before any host is touched, naming the CRL and the way out.
    brokers_before, state_before = managed_digests(lab), state_digests(lab)
    right = run_pyinfra(lab.name)
    assert right.returncode != 0, right.explain()
    assert "crl.pem (thisUpdate) is dated" in right.output, right.explain()
    assert "Nothing was signed" in right.output and "refresh-crl --force" in right.output
    assert "Traceback" not in right.output, right.explain()
    assert managed_digests(lab) == brokers_before and state_digests(lab) == state_before

    status = run_iotfleet("pki", "status", "-i", "inventory/lab.py", lab_name=lab.name)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "future" in status.stdout and "Everything is valid" not in status.stdout

    # The way out the message gives: re-sign the CRL now, then roll out.
    started = time.monotonic()
    resigned = run_iotfleet(
        "pki", "refresh-crl", "--force", "--no-push", "-i", "inventory/lab.py", lab_name=lab.name
    )
    assert resigned.returncode == 0, resigned.stdout + resigned.stderr
    repaired = run_pyinfra(lab.name)
    recovery = time.monotonic() - started
    assert repaired.returncode == 0, repaired.explain()
    on_broker = lab.ssh(lab.hosts[0], f"cat {layout.CRL}").stdout.encode()
    assert on_broker == lab_context(lab.name).pki.crl_pem()
    assert x509.load_pem_x509_crl(on_broker).last_update_utc.timestamp() <= time.time()
    lab.ssh(lab.hosts[0], "systemctl is-active mosquitto")
    again = run_pyinfra(lab.name)
    assert (again.returncode, again.changed, again.errors) == (0, 0, 0), again.explain()
    print(f"recovery (refresh-crl + rollout): {recovery:.1f} s")
