"""Gateways in the field (issue 13): device certificates renewed on the same key and delivered
over MQTT by the real rollout, on the bookworm lab. A running gateway switches without being
re-flashed, an offline one picks its certificate up when it returns, the old certificate is
revoked only once the gateway uses the new one, and forged pushes are refused."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotfleet.check.mqtt_probe import NOT_AUTHORIZED, Identity, session, succeeded, try_connect
from iotfleet.device.contract import CERT_FILE, CertificateUpdate, certificate_topic
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.gateway import Backoff, GatewaySimulator, read_bundle, read_flash_files
from iotfleet.lab.gateways import stats_file
from iotfleet.model.own_identities import DELIVERY_IDENTITY
from iotfleet.pki import revoke
from iotfleet.pki.delivery import read_ledger
from iotfleet.pki.testing import make_foreign_ca_identity
from tests.integration.conftest import LabFactory, RunningLab
from tests.support.broker_clients import identity_of, target
from tests.support.lab_fleet import lab_context, lab_environment
from tests.support.rollout import Rollout, run_iotfleet, run_pyinfra
from tests.support.waiting import wait_until

pytestmark = pytest.mark.lab

BOARDS = ("gw1", "gw2")


@dataclass
class FieldLab:
    lab: RunningLab
    old: dict[str, x509.Certificate]  # what each board was flashed with ("long ago")

    @property
    def ctx(self) -> FleetContext:
        return lab_context(self.lab.name)

    def flash_file(self, device: str) -> Path:
        board = next(g for g in self.lab.gateways if g["name"] == device)
        return Path(str(board["flash_file"]))

    def programmed(self, device: str) -> int:
        stats = json.loads(Path(stats_file(str(self.flash_file(device)))).read_text())
        return int(stats["bytes_programmed"])

    def simulator(self, device: str) -> GatewaySimulator:
        return GatewaySimulator.from_flash(
            self.flash_file(device),
            telemetry_interval=1.0,
            backoff=Backoff(initial=0.2, maximum=2.0),
        )

    def rollout_without_stations(self) -> Rollout:
        """A rollout of everything but the flash stations: boards in the field, not on a cable."""
        result = run_pyinfra(self.lab.name, "deploy.py", "--limit", "brokers")
        assert result.returncode == 0, result.explain()
        return result

    def crl_serials(self) -> set[int]:
        return {e.serial_number for e in x509.load_pem_x509_crl(self.ctx.pki.crl_pem())}


@pytest.fixture(scope="module")
def field(lab_factory: LabFactory) -> FieldLab:
    """Boards flashed with certificates that have 20 days left (inside the 30-day window)."""
    lab = lab_factory(suite="bookworm", brokers=2, gateways=len(BOARDS))
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()
    ctx = lab_context(lab.name)
    short = dataclasses.replace(ctx.pki_settings, device_days=20, renew_before_days=10)
    with lab_environment(lab.name):
        for device in BOARDS:
            revoke(short, device, "superseded")
        reconcile_fleet(ctx.fleet, short, ctx.state_dir)
    flashed = run_iotfleet(
        "gateway", "flash", "-i", "inventory/lab.py", "--no-progress", lab_name=lab.name
    )
    assert flashed.returncode == 0, flashed.stdout + flashed.stderr
    field = FieldLab(lab, {})
    for device in BOARDS:
        pem = read_flash_files(field.flash_file(device))[CERT_FILE]
        assert pem == ctx.pki.certificate_pem(device)
        field.old[device] = x509.load_pem_x509_certificate(pem)
    return field


def test_renewal_over_the_air_through_the_rollout(
    field: FieldLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = field.lab
    old = {d: field.old[d].serial_number for d in BOARDS}
    programmed = {d: field.programmed(d) for d in BOARDS}
    gw1 = field.simulator("gw1").start()
    try:
        assert gw1.wait_connected(30), gw1.stats
        # The renewal rollout: same key, delivered over MQTT by the rollout's own step.
        renewal = field.rollout_without_stations()
        assert "Deliver 2 renewed device certificate(s) over MQTT" in renewal.output, (
            renewal.explain()
        )
        ctx = field.ctx
        new = {d: ctx.pki.record(d).serial for d in BOARDS}  # type: ignore[union-attr]
        assert all(new[d] != old[d] for d in BOARDS)
        # The running gateway kept going: it switched to the new certificate on its own.
        wait_until(lambda: gw1.cert_serial == f"{new['gw1']:040x}" and gw1.connected, timeout=60)
        assert gw1.stats.certificates_installed == 1
        assert read_flash_files(field.flash_file("gw1"))[CERT_FILE] == ctx.pki.certificate_pem(
            "gw1"
        )
        assert field.programmed("gw1") == programmed["gw1"]  # nothing was flashed over serial
        ledger = read_ledger(ctx.pki_settings.state_dir)
        assert ledger["gw1"].in_use == new["gw1"], renewal.output[-3000:]
        # Delivered, never seen using it (gw2 may have a history on the shared lab: re-keys).
        assert ledger["gw2"].delivered == new["gw2"] and ledger["gw2"].in_use != new["gw2"]
        # Until the gateway was seen with the new one, the old one stayed valid everywhere.
        assert not field.crl_serials() & set(old.values())
        monkeypatch.setenv("COLUMNS", "200")  # the table, unclipped
        status = run_iotfleet("pki", "status", "-i", "inventory/lab.py", lab_name=lab.name)
        assert "retiring" in status.stdout and "in use" in status.stdout, status.stdout
        # Which gateways are alive, from their retained status (read with the delivery identity).
        alive = run_iotfleet("gateway", "status", "-i", "inventory/lab.py", lab_name=lab.name)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        rows = {line.split()[1]: line for line in alive.stdout.splitlines() if "│ gw" in line}
        assert "online" in rows["gw1"] and f"{new['gw1']:040x}"[:12] in rows["gw1"], alive.stdout
        assert "iotfleet-simulator/1" in rows["gw1"] and "824" in rows["gw1"], alive.stdout
        assert "online" not in rows["gw2"], alive.stdout

        # The next rollout revokes gw1's old certificate (seen switching); gw2's stays valid.
        after = field.rollout_without_stations()
        assert "retire old certificate of gw1" in after.output, after.explain()
        assert old["gw1"] in field.crl_serials() and old["gw2"] not in field.crl_serials()
        broker = lab.hosts[0].fqdn
        old_gw1 = Identity(
            field.old["gw1"].public_bytes(serialization.Encoding.PEM),
            read_bundle(field.flash_file("gw1")).private_key_pem,
        )
        refused = try_connect(target(ctx, broker, 8883), old_gw1, client_id="gw1")
        assert not refused.accepted, refused  # the broker got the CRL: the old one is out

        # gw2 was offline all along: it comes back with its old certificate (still valid) and
        # finds the new one waiting (retained).
        gw2 = field.simulator("gw2").start()
        try:
            wait_until(lambda: gw2.stats.certificates_installed == 1 and gw2.connected, timeout=60)
            assert gw2.stats.connects >= 2  # once with the old certificate, then with the new
            assert gw2.cert_serial == f"{new['gw2']:040x}"
            assert field.programmed("gw2") == programmed["gw2"]
            seen = run_iotfleet("pki", "deliver", "-i", "inventory/lab.py", "gw2",
                                lab_name=lab.name)  # fmt: skip
            assert seen.returncode == 0, seen.stdout + seen.stderr
            assert "new" in seen.stdout, seen.stdout
        finally:
            gw2.stop()
        last = field.rollout_without_stations()
        assert "retire old certificate of gw2" in last.output, last.explain()
        assert old["gw2"] in field.crl_serials()
        # The CRL push restarted the brokers: gw1 reconnects on its own, with no new certificate.
        wait_until(lambda: gw1.connected, timeout=60)
        assert gw1.stats.certificates_installed == 1
    finally:
        gw1.stop()


def test_forged_or_foreign_certificates_pushed_to_a_gateway_are_refused(field: FieldLab) -> None:
    ctx = field.ctx
    broker = field.lab.hosts[0].fqdn
    gw1 = field.simulator("gw1").start()
    try:
        assert gw1.wait_connected(30), gw1.stats
        serial = gw1.cert_serial
        key = read_bundle(field.flash_file("gw1")).private_key_pem
        forged = make_foreign_ca_identity("gw1", key_pem=key)  # its own key, a foreign CA
        forged_serial = x509.load_pem_x509_certificate(forged.certificate_pem).serial_number
        other = ctx.pki.record("gw2")
        assert other is not None
        pushes = {
            "does not chain to the CA": CertificateUpdate(
                device="gw1",
                serial=f"{forged_serial:040x}",
                certificate=forged.certificate_pem.decode(),
                chain=forged.ca_chain_pem.decode(),
            ),
            "not issued to 'gw1'": CertificateUpdate(
                device="gw1",
                serial=other.serial_hex,
                certificate=ctx.pki.certificate_pem("gw2").decode(),
                chain=ctx.pki.ca_chain_pem().decode(),
            ),
        }
        # Even pushed with iotfleet's own delivery identity (a broker or a key gone bad).
        with session(target(ctx, broker, 8883), identity_of(ctx, DELIVERY_IDENTITY)) as pusher:
            for count, (why, update) in enumerate(pushes.items(), 1):
                assert succeeded(pusher.publish(certificate_topic("gw1"), update.to_payload()))
                wait_until(lambda n=count: gw1.stats.certificates_rejected >= n, timeout=60)  # type: ignore[misc]
                assert why in gw1.stats.last_error
        assert gw1.cert_serial == serial and gw1.stats.certificates_installed == 0
        assert read_flash_files(field.flash_file("gw1"))[CERT_FILE] == ctx.pki.certificate_pem(
            "gw1"
        )
        # And nobody else may write there: not the fleet's admin, not another gateway.
        with session(target(ctx, broker, 8883), identity_of(ctx, "ops")) as admin:
            assert admin.publish(certificate_topic("gw1"), b"{}") == NOT_AUTHORIZED
        gw2 = field.simulator("gw2").start()
        try:
            assert gw2.wait_connected(30), gw2.stats
            assert gw2.publish(certificate_topic("gw1"), b"{}") == NOT_AUTHORIZED
        finally:
            gw2.stop()
    finally:
        gw1.stop()
