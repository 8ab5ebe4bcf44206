"""The CRL refresher on the bookworm lab (issue 13): `iotfleet pki refresh-crl` re-signs the CRL
when due and pushes only the CRL to every broker (deploy/crl.py through the apply script), with
no rollout; brokers keep refusing revoked certificates and accepting valid ones. Run as the
shipped timer runs it (files/nightly), once a simulated day for 30 days with the clock moved
(libfaketime on the control machine and in each broker's Mosquitto), it keeps every broker's CRL
current; skip it and the brokers refuse everyone."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from iotfleet.check.mqtt_probe import try_connect
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabFactory, LabHost, RunningLab
from tests.support.broker_clients import identity_of, refused_identity, target
from tests.support.lab_fleet import lab_context
from tests.support.rollout import REPO, run_iotfleet, run_pyinfra

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> RunningLab:
    lab = lab_factory(suite="bookworm", brokers=2)
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()
    return lab


def _live_crls(lab: RunningLab) -> dict[str, bytes]:
    return {h.name: lab.ssh(h, f"cat {layout.CRL}").stdout.encode() for h in lab.hosts}


def _number(pem: bytes) -> int:
    crl = x509.load_pem_x509_crl(pem)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _refresh(lab: RunningLab, *extra: str) -> str:
    result = run_iotfleet("pki", "refresh-crl", "-i", "inventory/lab.py", *extra, lab_name=lab.name)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_refresh_crl_pushes_only_the_crl_to_every_broker(lab: RunningLab) -> None:
    ctx = lab_context(lab.name)
    fresh = _refresh(lab)
    assert "CRL still fresh: not re-signed" in fresh, fresh
    previous = ctx.pki.crl_pem()
    assert set(_live_crls(lab).values()) == {previous}

    # Due (forced here: the brokers check CRLs against the real clock): re-signed and pushed.
    out = _refresh(lab, "--force")
    assert "CRL re-signed" in out and "Install the re-signed CRL" in out, out
    current = ctx.pki.crl_pem()
    assert _number(current) == _number(previous) + 1
    assert set(_live_crls(lab).values()) == {current}
    for host in lab.hosts:
        broker = target(ctx, host.fqdn, 8883)
        assert try_connect(broker, identity_of(ctx, "ops")).accepted
        assert not try_connect(broker, refused_identity(ctx, "revoked")).accepted

    # A broker left with the previous CRL (it missed a push) is repaired by the next run.
    host = lab.hosts[1]
    lab.ssh(host, f"cat > {layout.CRL}.old <<'EOF'\n{previous.decode()}EOF\n"
                  f"install -o root -g mosquitto -m 640 {layout.CRL}.old {layout.CRL}"
                  f" && rm {layout.CRL}.old")  # fmt: skip
    assert _live_crls(lab)[host.name] == previous
    out = _refresh(lab)
    assert "CRL still fresh" in out and "Install the re-signed CRL" in out, out
    assert set(_live_crls(lab).values()) == {current}

    # Nothing else was touched: a full rollout afterwards has nothing to change.
    again = run_pyinfra(lab.name)
    assert again.returncode == 0, again.explain()
    assert (again.changed, again.errors) == (0, 0), again.explain()


# libfaketime (Debian package faketime): moves the clock of chosen processes, not the machine's.
# On each broker it goes into Mosquitto only: the service (a drop-in) and the apply script's
# trial broker (a `mosquitto` wrapper first in PATH); both read the offset from one file.
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
BROKER_FAKETIME_LIB = "/usr/local/lib/iotfleet-test-libfaketime.so.1"
BROKER_OFFSET_FILE = "/etc/iotfleet-test-faketime"  # "+Nd", read at every clock call
FAKETIME_ENV = {
    "LD_PRELOAD": BROKER_FAKETIME_LIB,
    "FAKETIME_TIMESTAMP_FILE": BROKER_OFFSET_FILE,
    "FAKETIME_NO_CACHE": "1",
}
FAKETIME_DROPIN = f"{layout.DROPIN_DIR}/zz-iotfleet-test-faketime.conf"
MOSQUITTO_WRAPPER = "/usr/local/bin/mosquitto"  # before /usr/sbin in every PATH
NIGHTLY = REPO / "files" / "nightly"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(NIGHTLY / name)
    return unit


def _shipped_refresh(lab: RunningLab) -> tuple[list[str], Path]:
    """The CRL service's ExecStart and WorkingDirectory, aimed at this checkout and the lab."""
    service = _unit("iotfleet-crl@.service")["Service"]
    workdir = service["WorkingDirectory"]
    command = service["ExecStart"].replace(workdir, str(REPO)).replace("%i", "lab")
    return shlex.split(command), REPO


def _broker_clocks(lab: RunningLab, days: int) -> None:
    for host in lab.hosts:
        lab.ssh(host, f"echo +{days}d > {BROKER_OFFSET_FILE}")


def _put(lab: RunningLab, host: LabHost, path: str, data: bytes, mode: str) -> None:
    copied = subprocess.run(
        lab.ssh_argv(host, f"cat > {path} && chmod {mode} {path}"), input=data, check=False,
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr


@pytest.fixture
def moved_clocks(lab: RunningLab) -> object:
    """Each broker's Mosquitto on a clock the test moves; put back afterwards."""
    library = FAKETIME_LIB.read_bytes()
    dropin = "[Service]\n" + "".join(f"Environment={k}={v}\n" for k, v in FAKETIME_ENV.items())
    env = " ".join(f"{k}={v}" for k, v in FAKETIME_ENV.items())
    wrapper = f'#!/bin/sh\nexec env {env} /usr/sbin/mosquitto "$@"\n'
    for host in lab.hosts:
        _put(lab, host, BROKER_FAKETIME_LIB, library, "644")
        _put(lab, host, BROKER_OFFSET_FILE, b"+0d\n", "644")
        _put(lab, host, FAKETIME_DROPIN, dropin.encode(), "644")
        _put(lab, host, MOSQUITTO_WRAPPER, wrapper.encode(), "755")
        lab.ssh(host, "systemctl daemon-reload && systemctl restart mosquitto")
    yield
    for host in lab.hosts:
        lab.ssh(host, f"rm -f {MOSQUITTO_WRAPPER} {FAKETIME_DROPIN} {BROKER_OFFSET_FILE} "
                      f"{BROKER_FAKETIME_LIB} && systemctl daemon-reload && "
                      "systemctl restart mosquitto")  # fmt: skip
    # Back to the real clock: a CRL signed now (the simulated ones lie in the future).
    _refresh(lab, "--force")


def _live_next_updates(lab: RunningLab) -> dict[str, datetime | None]:
    return {
        name: x509.load_pem_x509_crl(pem).next_update_utc for name, pem in _live_crls(lab).items()
    }


def test_the_shipped_crl_timer_keeps_every_broker_current_for_30_days(
    lab: RunningLab, moved_clocks: object
) -> None:
    ctx = lab_context(lab.name)
    timer = _unit("iotfleet-crl@.timer")["Timer"]
    assert timer["OnCalendar"].startswith("*-*-* "), "the shipped timer runs once a day"
    command, workdir = _shipped_refresh(lab)
    start = datetime.now(UTC)
    ops = identity_of(ctx, "ops")
    revoked = refused_identity(ctx, "revoked")
    resigned = 0
    for day in range(1, 31):
        _broker_clocks(lab, day)
        run = subprocess.run(
            command, cwd=workdir, capture_output=True, text=True, timeout=600, check=False,
            env={**os.environ, "IOTFLEET_LAB": lab.name, "LD_PRELOAD": str(FAKETIME_LIB),
                 "FAKETIME": f"+{day}d"},
        )  # fmt: skip
        assert run.returncode == 0, f"day {day}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        resigned += "CRL re-signed" in run.stdout
        simulated = start + timedelta(days=day)
        for name, next_update in _live_next_updates(lab).items():
            assert next_update is not None, name
            assert next_update > simulated + timedelta(days=1), (day, name, next_update)
        for host in lab.hosts:
            broker = target(ctx, host.fqdn, 8883)
            assert try_connect(broker, ops).accepted, (day, host.name)
            if day % 10 == 0:
                assert not try_connect(broker, revoked).accepted, (day, host.name)
    # Re-signed every crl_days - crl_refresh_before_days (2) days, pushed with no rollout.
    assert 13 <= resigned <= 16, resigned

    # Without the timer the CRL lapses: a week later, every broker refuses even valid clients.
    _broker_clocks(lab, 30 + ctx.pki_settings.crl_days + 1)
    for host in lab.hosts:
        assert not try_connect(target(ctx, host.fqdn, 8883), ops).accepted, host.name
