"""Certificate renewal over the air against a real local Mosquitto (the fleet's rendered config):
a running gateway switches to its renewed certificate without re-flashing, an offline one picks
it up when it returns, forged or foreign certificates are refused, and only iotfleet's delivery
identity may write a certificate topic."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from iotfleet.check.mqtt_probe import NOT_AUTHORIZED, Identity, Target, session, succeeded
from iotfleet.device.contract import (
    CERT_FILE,
    CertificateUpdate,
    GatewayStatus,
    certificate_topic,
)
from iotfleet.emulator import BoardServer
from iotfleet.flash import FlashRegistry, flash_station
from iotfleet.fleet.cert_delivery import (
    GatewaySeen,
    deliver_certificates,
    gateway_statuses,
    pending_deliveries,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.gateway import Backoff, GatewaySimulator, read_bundle, read_flash_files
from iotfleet.model.own_identities import DELIVERY_IDENTITY
from iotfleet.pki import revoke
from iotfleet.pki.testing import (
    ThrowawayIdentity,
    make_foreign_ca_identity,
    make_unrecorded_identity,
)
from iotfleet.roles.mosquitto.render import service_files
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto
from tests.support.waiting import wait_until
from tests.unit.gateway_helpers import GatewayFleet, board, emulated, gateway_environment, options

DEVICES = ("gw-1", "gw-2")


@dataclass
class Site:
    ctx: FleetContext
    port: int
    boards: dict[str, BoardServer]
    home: Path

    def flash_file(self, device: str) -> Path:
        return self.boards[device].flash.path

    def simulator(self, device: str) -> GatewaySimulator:
        return GatewaySimulator.from_flash(
            self.flash_file(device),
            telemetry_interval=0.5,
            backoff=Backoff(initial=0.05, maximum=0.2),
        )

    def as_(self, name: str) -> Identity:
        return Identity(self.ctx.pki.certificate_pem(name), self.ctx.pki.private_key_pem(name))

    def target(self) -> Target:
        return Target("localhost", self.port, self.ctx.pki.ca_chain_pem())

    def deliver(self, *devices: str, wait: float = 10) -> dict[str, object]:
        results = deliver_certificates(
            self.ctx,
            list(devices) or None,
            wait=wait,
            targets={"localhost": ("localhost", self.port)},
        )
        return {r.device: r for r in results}

    def crl_serials(self) -> set[int]:
        return {e.serial_number for e in x509.load_pem_x509_crl(self.ctx.pki.crl_pem())}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Two boards flashed with certificates 20 days from expiry (inside the 30-day renewal
    window), and a local broker running the fleet's config."""
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("broker")
    port = free_port()
    with gateway_environment(home):
        gateways = GatewayFleet(home, [{"id": d} for d in DEVICES], broker_port=port)
        boards = {
            "gw-1": emulated(home / "gw-1.flash", "18:fe:34:00:03:01"),
            "gw-2": emulated(home / "gw-2.flash", "18:fe:34:00:03:02"),
        }
        try:
            ctx = gateways.context([board(s, d) for d, s in boards.items()])
            short = dataclasses.replace(ctx.pki_settings, device_days=20, renew_before_days=10)
            for device in DEVICES:
                revoke(short, device, "superseded")
            reconcile_fleet(ctx.fleet, short, ctx.state_dir)
            results = flash_station(ctx, "@local", progress=False, options=options(home))
            assert [r.status for r in results] == ["flashed", "flashed"], results
            for server in boards.values():
                server.flash.flush()
            broker = ctx.fleet.brokers[0]
            config, files = service_files(ctx, broker)
            paths: dict[str, str] = {}
            for managed in [*broker_pki_files(ctx.pki, broker.name), *files]:
                local = work / managed.staged_name
                local.write_bytes(managed.content)
                paths[managed.path] = str(local)
            with running_mosquitto(config.text(paths), work, [port]):
                yield Site(ctx, port, boards, home)
        finally:
            for server in boards.values():
                server.close()


def test_renewal_over_the_air_end_to_end(site: Site) -> None:
    ctx = site.ctx
    flashed = {d: read_bundle(site.flash_file(d)).certificate_pem for d in DEVICES}
    old = {d: x509.load_pem_x509_certificate(flashed[d]).serial_number for d in DEVICES}
    programmed = {d: site.boards[d].flash.path.stat().st_ino for d in DEVICES}
    gw1 = site.simulator("gw-1").start()
    try:
        assert gw1.wait_connected(10), gw1.stats.last_error
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
        assert set(report.renewed_same_key) == set(DEVICES)
        new = {d: ctx.pki.record(d).serial for d in DEVICES}  # type: ignore[union-attr]
        assert pending_deliveries(ctx) == list(DEVICES)
        # Both old certificates still valid: not in the CRL.
        assert not site.crl_serials() & set(old.values())

        results = site.deliver()
        assert results["gw-1"].switched, results  # type: ignore[attr-defined]
        assert results["gw-2"].delivered and not results["gw-2"].online  # type: ignore[attr-defined]
        assert pending_deliveries(ctx) == []
        # gw-1 stored it in its flash (same file, written in place) and reconnected with it.
        assert gw1.cert_serial == f"{new['gw-1']:040x}"
        assert gw1.stats.certificates_installed == 1 and gw1.connected
        assert read_flash_files(site.flash_file("gw-1"))[CERT_FILE] == ctx.pki.certificate_pem(
            "gw-1"
        )
        assert site.flash_file("gw-1").stat().st_ino == programmed["gw-1"]

        # The next reconcile revokes gw-1's old certificate only; gw-2 was not seen switching.
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
        assert report.retired == ("gw-1",)
        assert old["gw-1"] in site.crl_serials() and old["gw-2"] not in site.crl_serials()

        # gw-2 comes back online: the retained certificate is waiting for it.
        gw2 = site.simulator("gw-2").start()
        try:
            wait_until(lambda: gw2.stats.certificates_installed == 1 and gw2.connected, timeout=15)
            assert gw2.cert_serial == f"{new['gw-2']:040x}"
            assert site.deliver("gw-2")["gw-2"].switched  # type: ignore[attr-defined]
        finally:
            gw2.stop()
        assert reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir).retired == ("gw-2",)
    finally:
        gw1.stop()
    # A board that comes back to a flash station gets the renewed certificate in its image too.
    flashed_again = flash_station(ctx, "@local", progress=False, options=options(site.home))
    assert all(r.ok for r in flashed_again), flashed_again
    registry = FlashRegistry(ctx.registry_path)
    for device in DEVICES:
        record = registry.latest(device)
        assert record is not None and record.cert_serial is not None
        assert int(record.cert_serial, 16) == new[device]


def _update(identity: ThrowawayIdentity) -> CertificateUpdate:
    serial = x509.load_pem_x509_certificate(identity.certificate_pem).serial_number
    return CertificateUpdate(
        device=identity.name,
        serial=f"{serial:040x}",
        certificate=identity.certificate_pem.decode(),
        chain=identity.ca_chain_pem.decode(),
    )


def test_forged_and_foreign_certificates_are_refused(site: Site) -> None:
    ctx = site.ctx
    gw1 = site.simulator("gw-1").start()
    try:
        assert gw1.wait_connected(10), gw1.stats.last_error
        serial = gw1.cert_serial
        key = read_bundle(site.flash_file("gw-1")).private_key_pem
        forged = make_foreign_ca_identity("gw-1", key_pem=key)  # its own key, a foreign CA
        cert = x509.load_pem_x509_certificate(forged.certificate_pem)
        pushes = {
            "does not chain to the CA": CertificateUpdate(
                device="gw-1",
                serial=f"{cert.serial_number:040x}",
                certificate=forged.certificate_pem.decode(),
                chain=forged.ca_chain_pem.decode(),
            ),
            # Issued by the fleet's own CA, to gw-1, for a key that is not gw-1's.
            "does not carry this gateway's key": _update(
                make_unrecorded_identity(ctx.pki_settings, "gw-1")
            ),
            "not issued to 'gw-1'": CertificateUpdate(
                device="gw-1",
                serial=f"{ctx.pki.record('gw-2').serial:040x}",  # type: ignore[union-attr]
                certificate=ctx.pki.certificate_pem("gw-2").decode(),
                chain=ctx.pki.ca_chain_pem().decode(),
            ),
        }
        with session(site.target(), site.as_(DELIVERY_IDENTITY)) as delivery:
            for count, (why, update) in enumerate(pushes.items(), 1):
                assert delivery.publish(certificate_topic("gw-1"), update.to_payload()) == 0
                wait_until(lambda n=count: gw1.stats.certificates_rejected >= n, timeout=15)  # type: ignore[misc]
                assert why in gw1.stats.last_error
            assert delivery.publish(certificate_topic("gw-1"), b"not json") == 0
            wait_until(lambda: gw1.stats.certificates_rejected >= len(pushes) + 1, timeout=15)
            assert "certificate update" in gw1.stats.last_error
        assert gw1.cert_serial == serial and gw1.stats.certificates_installed == 0
        assert read_flash_files(site.flash_file("gw-1"))[CERT_FILE] == ctx.pki.certificate_pem(
            "gw-1"
        )
        # Nobody else may write there: not the admin (its "#" stops short), not another device.
        with session(site.target(), site.as_("ops")) as admin:
            good = pushes["does not chain to the CA"].to_payload()
            assert admin.publish(certificate_topic("gw-1"), good) == NOT_AUTHORIZED
        gw2 = site.simulator("gw-2").start()
        try:
            assert gw2.wait_connected(10)
            assert gw2.publish(certificate_topic("gw-1"), b"x") == NOT_AUTHORIZED
        finally:
            gw2.stop()
    finally:
        gw1.stop()


def test_gateway_status_reads_presence_with_a_confined_identity(site: Site) -> None:
    gw1 = site.simulator("gw-1").start()
    try:
        assert gw1.wait_connected(10), gw1.stats.last_error
        gateways, problems = gateway_statuses(
            site.ctx, targets={"localhost": ("localhost", site.port)}
        )
        assert problems == []
        by_device = {g.device: g for g in gateways}
        online = by_device["gw-1"]
        assert (online.state, online.brokers, online.cert_serial) == (
            "online",
            ["localhost"],
            gw1.cert_serial,
        )
        assert online.firmware and online.since is not None
        # The identity that reads presence reads nothing else of a device.
        with session(site.target(), site.as_(DELIVERY_IDENTITY)) as reader:
            reader.subscribe("devices/+/telemetry/#")
            reader.subscribe("devices/gw-1/commands/#")
            assert succeeded(gw1.publish("devices/gw-1/telemetry/state", b"21.5"))
            assert not reader.wait_for_message("devices/", timeout=1)
    finally:
        gw1.stop()
    gateways, _ = gateway_statuses(site.ctx, targets={"localhost": ("localhost", site.port)})
    assert {g.device: g.state for g in gateways}["gw-1"] == "offline"


def test_an_offline_gateway_shows_when_it_was_last_seen(site: Site) -> None:
    """A retained will replaces the retained online status, so the will itself (fixed at
    connect time) carries the certificate, the firmware and when that session came online."""
    from iotfleet.cli.gateway import since_text
    from iotfleet.gateway.simulator import FIRMWARE

    targets = {"localhost": ("localhost", site.port)}
    status_topic = f"{site.ctx.fleet.topic_prefix(site.ctx.fleet.device('gw-1'))}/status"

    def seen() -> GatewaySeen:
        gateways, problems = gateway_statuses(site.ctx, settle=0.5, targets=targets)
        assert problems == []
        return {g.device: g for g in gateways}["gw-1"]

    gw1 = site.simulator("gw-1").start()
    try:
        assert gw1.wait_connected(10), gw1.stats.last_error
        wait_until(lambda: seen().state == "online", timeout=15)
        online, serial = seen(), gw1.cert_serial
        assert online.since is not None
    finally:
        gw1.cut_power()  # no goodbye: the broker publishes the will
    wait_until(lambda: seen().state == "offline", timeout=15)
    dead = seen()
    assert dead.since is None  # nobody knows when it went
    assert (dead.last_seen, dead.cert_serial, dead.firmware) == (online.since, serial, FIRMWARE)
    assert since_text(dead) == f"last seen {online.since:%Y-%m-%d %H:%M}"

    # Only the device writes its status: another device and the reader are refused.
    forged = GatewayStatus(state="online", cert_serial="0" * 40, since=online.since)
    gw2 = site.simulator("gw-2").start()
    try:
        assert gw2.wait_connected(10)
        assert gw2.publish(status_topic, forged.model_dump_json()) == NOT_AUTHORIZED
    finally:
        gw2.stop()
    with session(site.target(), site.as_(DELIVERY_IDENTITY)) as reader:
        assert reader.publish(status_topic, forged.model_dump_json().encode()) == NOT_AUTHORIZED
    assert seen().last_seen == online.since

    # A clean goodbye knows when it left.
    gw1 = site.simulator("gw-1").start()
    try:
        assert gw1.wait_connected(10)
        wait_until(lambda: seen().state == "online", timeout=15)
        back = seen().since
    finally:
        gw1.stop()
    gone = seen()
    assert gone.state == "offline" and gone.since is not None and back is not None
    assert gone.since >= back and gone.last_seen == gone.since
    assert since_text(gone) == f"{gone.since:%Y-%m-%d %H:%M}"
