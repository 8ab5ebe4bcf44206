"""Re-key over the air (issue 13) on the bookworm lab: `iotfleet pki rekey`, then the real
rollout asks the gateway (simulator over mTLS) for a CSR, signs its new key and delivers the
certificate; the gateway switches key and certificate without being re-flashed and stays
connected; the old certificate is revoked only after. Forged CSRs are refused, and a gateway
offline during the re-key picks it up when it returns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotfleet.check.mqtt_probe import NOT_AUTHORIZED, Identity, session, succeeded, try_connect
from iotfleet.device.contract import (
    CERT_FILE,
    KEY_FILE,
    PENDING_KEY_FILE,
    CsrMessage,
    RekeyRequest,
    csr_topic,
    rekey_topic,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.gateway import Backoff, GatewaySimulator, read_flash_files
from iotfleet.gateway.rekey import csr_pem, new_key_pem
from iotfleet.pki.rekey import read_rekeys
from iotfleet.pki.store import KeyOnBoardError
from iotfleet.pki.testing import csr_signed_by_another_key
from tests.integration.conftest import LabFactory, RunningLab
from tests.support.broker_clients import identity_of, target
from tests.support.lab_fleet import lab_context
from tests.support.rollout import Rollout, run_iotfleet, run_pyinfra
from tests.support.waiting import wait_until

pytestmark = pytest.mark.lab


@dataclass
class RekeyLab:
    lab: RunningLab

    @property
    def ctx(self) -> FleetContext:
        return lab_context(self.lab.name)

    @property
    def broker(self) -> str:
        return self.lab.hosts[0].fqdn

    def flash_file(self, device: str) -> Path:
        board = next(g for g in self.lab.gateways if g["name"] == device)
        return Path(str(board["flash_file"]))

    def simulator(self, device: str) -> GatewaySimulator:
        return GatewaySimulator.from_flash(
            self.flash_file(device),
            telemetry_interval=1.0,
            backoff=Backoff(initial=0.2, maximum=2.0),
        )

    def board_identity(self, device: str) -> Identity:
        """What the board holds: its flashed (or installed) certificate and key."""
        files = read_flash_files(self.flash_file(device))
        return Identity(files[CERT_FILE], files[KEY_FILE])

    def rollout(self) -> Rollout:
        """Everything but the flash stations: the boards are in the field, not on a cable."""
        result = run_pyinfra(self.lab.name, "deploy.py", "--limit", "brokers")
        assert result.returncode == 0, result.explain()
        return result

    def rekey(self, device: str) -> None:
        asked = run_iotfleet("pki", "rekey", device, "-i", "inventory/lab.py",
                             lab_name=self.lab.name)  # fmt: skip
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert f"re-key of {device} requested" in asked.stdout

    def deliver(self, device: str) -> str:
        result = run_iotfleet("pki", "deliver", device, "-i", "inventory/lab.py", "--wait", "5",
                              lab_name=self.lab.name)  # fmt: skip
        return f"exit {result.returncode}\n{result.stdout}{result.stderr}"

    def crl_serials(self) -> set[int]:
        return {e.serial_number for e in x509.load_pem_x509_crl(self.ctx.pki.crl_pem())}


@pytest.fixture(scope="module")
def field(lab_factory: LabFactory) -> Iterator[RekeyLab]:
    lab = lab_factory(suite="bookworm", brokers=1, gateways=2)
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()
    flashed = run_iotfleet(
        "gateway", "flash", "-i", "inventory/lab.py", "--no-progress", lab_name=lab.name
    )
    assert flashed.returncode == 0, flashed.stdout + flashed.stderr
    yield RekeyLab(lab)
    # The shared lab's next modules flash these boards: a key made on a board cannot be put in
    # an image, so the re-keyed devices get a fresh identity from the control machine again.
    for device in ("gw1", "gw2"):
        record = lab_context(lab.name).pki.record(device)
        if record is not None and record.status == "valid" and record.key_span[1] == 0:
            revoked = run_iotfleet("pki", "revoke", device, "--reason", "superseded", "-i",
                                   "inventory/lab.py", lab_name=lab.name)  # fmt: skip
            assert revoked.returncode == 0, revoked.stdout + revoked.stderr


def _public(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert_public(pem: bytes) -> bytes:
    return (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_rekey_over_the_air_through_the_rollout(field: RekeyLab) -> None:
    ctx = field.ctx
    before = field.board_identity("gw1")
    old_serial = ctx.pki.record("gw1").serial  # type: ignore[union-attr]
    gw1 = field.simulator("gw1").start()
    try:
        assert gw1.wait_connected(30), gw1.stats
        field.rekey("gw1")
        assert read_rekeys(ctx.pki_settings.state_dir)["gw1"].reason == "operator"

        rollout = field.rollout()
        assert "Re-key 1 device(s) over MQTT" in rollout.output, rollout.explain()
        new = ctx.pki.record("gw1")
        assert new is not None and new.serial != old_serial
        assert f"re-key of gw1 (operator): new certificate {new.serial_hex[:12]}, in use" in (
            rollout.output
        ), rollout.explain()
        # The gateway made the key, got the certificate for it and switched, still connected.
        wait_until(lambda: gw1.cert_serial == new.serial_hex and gw1.connected, timeout=60)
        assert gw1.stats.csrs_sent == 1 and gw1.stats.keys_replaced == 1
        after = field.board_identity("gw1")
        assert after.private_key_pem != before.private_key_pem
        assert after.certificate_pem == ctx.pki.certificate_pem("gw1")
        assert _cert_public(after.certificate_pem) == _public(after.private_key_pem or b"")
        assert PENDING_KEY_FILE not in read_flash_files(field.flash_file("gw1"))
        # The new key never left the board: the PKI has none.
        with pytest.raises(KeyOnBoardError):
            ctx.pki.private_key_pem("gw1")
        assert "gw1" not in read_rekeys(ctx.pki_settings.state_dir)  # done: seen in use
        # Until the gateway was seen with the new one, the old one stayed out of the CRL.
        assert old_serial not in field.crl_serials()

        # The next rollout revokes the old certificate; the broker then refuses the old key.
        last = field.rollout()
        assert "retire old certificate of gw1" in last.output, last.explain()
        assert old_serial in field.crl_serials()
        refused = try_connect(target(ctx, field.broker, 8883), before, client_id="gw1")
        assert not refused.accepted, refused
        wait_until(lambda: gw1.connected, timeout=60)
        assert gw1.cert_serial == new.serial_hex and gw1.stats.keys_replaced == 1
        assert "Re-key" not in last.output  # nothing left to re-key
    finally:
        gw1.stop()


def test_forged_csrs_are_refused_and_an_offline_gateway_rekeys_when_back(field: RekeyLab) -> None:
    ctx = field.ctx
    broker = target(ctx, field.broker, 8883)
    old = ctx.pki.record("gw2")
    assert old is not None
    field.rekey("gw2")
    asked = field.rollout()  # gw2 is offline: the request waits for it (retained)
    assert "re-key of gw2 (operator): asked, no CSR yet" in asked.output, asked.explain()
    request = read_rekeys(ctx.pki_settings.state_dir)["gw2"].request

    # The board's own identity gone bad (or a clone of its certificate and old key) answers.
    as_gw2 = field.board_identity("gw2")
    with session(broker, as_gw2, client_id="gw2") as board:
        assert succeeded(board.subscribe(rekey_topic("gw2")))
        assert board.wait_for_message(rekey_topic("gw2"), timeout=30)
        retained = RekeyRequest.from_payload(bytes(board.messages(rekey_topic("gw2"))[0].payload))
        assert (retained.device, retained.request) == ("gw2", request)
        carried, signer = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        other_cn = new_key_pem("ec-p256")
        forgeries = {
            "not 'CN=gw2'": csr_pem("gw1", other_cn),  # another device's name
            "not signed by the key it carries": csr_signed_by_another_key("gw2", carried, signer),
        }
        for why, forged in forgeries.items():
            message = CsrMessage(device="gw2", request=request, csr=forged.decode())
            assert succeeded(board.publish(csr_topic("gw2"), message.to_payload(), retain=True))
            out = field.deliver("gw2")
            assert out.startswith("exit 1") and "refused, nothing signed" in out, out
            assert why in out, out
            assert ctx.pki.record("gw2").serial == old.serial  # type: ignore[union-attr]

    # Nobody but gw2 may publish on its CSR topic: not another gateway, not the fleet's admin.
    honest_elsewhere = CsrMessage(
        device="gw2", request=request, csr=csr_pem("gw2", new_key_pem("ec-p256")).decode()
    ).to_payload()
    with session(broker, field.board_identity("gw1"), client_id="gw1") as gw1:
        assert gw1.publish(csr_topic("gw2"), honest_elsewhere, retain=True) == NOT_AUTHORIZED
        assert gw1.publish(rekey_topic("gw2"), b"{}", retain=True) == NOT_AUTHORIZED
    with session(broker, identity_of(ctx, "ops")) as admin:
        assert admin.publish(csr_topic("gw2"), honest_elsewhere, retain=True) == NOT_AUTHORIZED
    still = field.deliver("gw2")  # the forged CSR is still what the topic holds
    assert "not signed by the key it carries" in still, still
    assert ctx.pki.record("gw2").serial == old.serial  # type: ignore[union-attr]

    # gw2 comes back: it finds the request, answers with a real CSR, and the rollout signs it.
    gw2 = field.simulator("gw2").start()
    try:
        wait_until(lambda: gw2.stats.csrs_sent == 1, timeout=60)
        rollout = field.rollout()
        new = ctx.pki.record("gw2")
        assert new is not None and new.serial != old.serial, rollout.explain()
        wait_until(lambda: gw2.cert_serial == new.serial_hex and gw2.connected, timeout=60)
        assert gw2.stats.keys_replaced == 1
        assert _cert_public(ctx.pki.certificate_pem("gw2")) == _public(
            read_flash_files(field.flash_file("gw2"))[KEY_FILE]
        )
        assert old.serial not in field.crl_serials()
        last = field.rollout()
        assert "retire old certificate of gw2" in last.output, last.explain()
        assert old.serial in field.crl_serials()
        assert not try_connect(broker, as_gw2, client_id="gw2").accepted
        wait_until(lambda: gw2.connected, timeout=60)
    finally:
        gw2.stop()
