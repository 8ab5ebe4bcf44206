"""The gateway simulator against a real local Mosquitto (the fleet's rendered config): boards
flashed by the engine, the simulator reads each board's LittleFS back out of the emulated
flash, connects with the flashed certificate, publishes telemetry, answers commands, is refused
on another device's topics, and reconnects with backoff."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from iotfleet.check.mqtt_probe import NOT_AUTHORIZED, Identity, Target, session, succeeded
from iotfleet.cli.gateway import cli as gateway_cli
from iotfleet.emulator import BoardServer
from iotfleet.flash import flash_station
from iotfleet.fleet.context import FleetContext
from iotfleet.gateway import Backoff, GatewayError, GatewaySimulator, read_bundle
from iotfleet.roles.mosquitto.render import service_files
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto
from tests.support.waiting import wait_until
from tests.unit.gateway_helpers import (
    WIFI_PASSPHRASE,
    GatewayFleet,
    board,
    emulated,
    gateway_environment,
    options,
)


@dataclass
class Site:
    ctx: FleetContext
    port: int
    boards: dict[str, BoardServer]

    def flash_file(self, device: str) -> Path:
        return self.boards[device].flash.path

    def admin(self) -> Identity:
        return Identity(self.ctx.pki.certificate_pem("ops"), self.ctx.pki.private_key_pem("ops"))

    def target(self) -> Target:
        return Target("localhost", self.port, self.ctx.pki.ca_chain_pem())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("broker")
    port = free_port()
    with gateway_environment(home):
        gateways = GatewayFleet(home, [{"id": "gw-1"}, {"id": "gw-2"}], broker_port=port)
        boards = {
            "gw-1": emulated(home / "gw-1.flash", "18:fe:34:00:02:01"),
            "gw-2": emulated(home / "gw-2.flash", "18:fe:34:00:02:02"),
        }
        try:
            ctx = gateways.context([board(s, d) for d, s in boards.items()])
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
                yield Site(ctx, port, boards)
        finally:
            for server in boards.values():
                server.close()


def test_bundle_read_back_from_the_emulated_flash(site: Site) -> None:
    bundle = read_bundle(site.flash_file("gw-1"), "4M2M")
    assert bundle.config.device_id == "gw-1"
    assert bundle.config.mqtt_hosts == ["localhost"] and bundle.config.mqtt_port == site.port
    assert bundle.certificate_pem == site.ctx.pki.certificate_pem("gw-1")
    with pytest.raises(GatewayError, match="no LittleFS the board can mount at 0x300000"):
        read_bundle(site.flash_file("gw-1"), "4M1M")  # wrong layout: nothing there


def test_connects_publishes_answers_and_is_refused_elsewhere(site: Site) -> None:
    bundle = read_bundle(site.flash_file("gw-1"))
    simulator = GatewaySimulator(
        bundle, telemetry_interval=0.2, backoff=Backoff(initial=0.05, maximum=0.2)
    )
    with session(site.target(), site.admin()) as admin:
        admin.subscribe("devices/+/telemetry/#")
        admin.subscribe("devices/gw-1/status")
        simulator.start()
        try:
            assert simulator.wait_connected(10), simulator.stats.last_error
            assert admin.wait_for_message("devices/gw-1/telemetry/state", timeout=5)
            reading = json.loads(admin.messages("devices/gw-1/telemetry/")[0].payload)
            assert reading["device"] == "gw-1" and reading["seq"] >= 1

            assert succeeded(admin.publish("devices/gw-1/commands/ping", b'{"id": 7}'))
            acks = _wait_ack(admin, "ping")
            assert acks == [{"command": "ping", "ok": True, "id": 7, "reply": "pong"}]

            # Its own topics are open; another device's are not (MQTT 5 PUBACK 0x87).
            assert succeeded(simulator.publish("devices/gw-1/telemetry/extra", b"1"))
            assert simulator.publish("devices/gw-2/telemetry/state", b"spoof") == NOT_AUTHORIZED
            assert simulator.publish("devices/gw-2/status", b"spoof") == NOT_AUTHORIZED
            assert not admin.messages("devices/gw-2/")

            # "restart" drops the session; the gateway comes back through its backoff.
            assert succeeded(admin.publish("devices/gw-1/commands/restart", b""))
            wait_until(lambda: simulator.stats.connects >= 2 and simulator.connected, timeout=10)
        finally:
            simulator.stop()
        assert simulator.stats.telemetry_sent >= 1 and simulator.stats.commands_handled >= 2


def test_backoff_when_the_broker_is_unreachable(site: Site) -> None:
    bundle = read_bundle(site.flash_file("gw-2"))
    closed_port = free_port()
    simulator = GatewaySimulator(
        bundle, broker=("localhost", closed_port), backoff=Backoff(initial=0.02, maximum=0.05)
    )
    simulator.start()
    try:
        wait_until(lambda: simulator.stats.connect_failures >= 3, timeout=10)
    finally:
        simulator.stop()
    assert simulator.stats.connects == 0
    assert "refused" in simulator.stats.last_error.lower()


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    backoff = Backoff(initial=1, maximum=30, jitter=0.2, rng=random.Random(5))
    delays = [backoff.next_delay() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        base = min(30, 2**attempt)
        assert base * 0.8 <= delay <= min(30, base * 1.2)
    backoff.reset()
    assert backoff.next_delay() <= 1.2


def test_cli_run_and_inspect(site: Site) -> None:
    runner = CliRunner()
    result = runner.invoke(
        gateway_cli,
        [
            "run",
            "gw-2",
            "--flash",
            str(site.flash_file("gw-2")),
            "--count",
            "2",
            "--interval",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"connected to localhost:{site.port} as gw-2" in result.output
    assert "2 reading(s)" in result.output

    wrong = runner.invoke(gateway_cli, ["run", "gw-1", "--flash", str(site.flash_file("gw-2"))])
    assert wrong.exit_code == 2 and "holds device gw-2, not gw-1" in wrong.output

    shown = runner.invoke(gateway_cli, ["inspect", "--flash", str(site.flash_file("gw-2"))])
    assert shown.exit_code == 0, shown.output
    for name in ("/iotfleet.json", "/ca.pem", "/client.pem", "/client.key", "/wifi.pass"):
        assert name in shown.output
    assert WIFI_PASSPHRASE not in shown.output and "PRIVATE KEY" not in shown.output


def _wait_ack(admin: object, command: str) -> list[dict[str, object]]:
    from iotfleet.check.mqtt_probe import Session

    assert isinstance(admin, Session)
    found: list[dict[str, object]] = []

    def arrived() -> bool:
        found.clear()
        for message in admin.messages("devices/gw-1/status"):
            body = json.loads(message.payload)
            if body.get("command") == command:
                found.append(body)
        return bool(found)

    wait_until(arrived, timeout=10)
    return found
