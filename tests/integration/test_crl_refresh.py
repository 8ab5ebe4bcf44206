"""The CRL refresher on the bookworm lab (issue 13): `iotfleet pki refresh-crl` re-signs the CRL
when due and pushes only the CRL to every broker (deploy/crl.py through the apply script), with
no rollout; brokers keep refusing revoked certificates and accepting valid ones."""

from __future__ import annotations

import pytest
from cryptography import x509

from iotfleet.check.mqtt_probe import try_connect
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabFactory, RunningLab
from tests.support.broker_clients import identity_of, refused_identity, target
from tests.support.lab_fleet import lab_context
from tests.support.rollout import run_iotfleet, run_pyinfra

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
