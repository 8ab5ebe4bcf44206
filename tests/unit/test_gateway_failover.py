"""Gateway failover (issue 15 item 3) against two real Mosquitto brokers on loopback, each with
the fleet's rendered configuration: the first broker dies, the simulator goes on to the second
and publishes there; the first comes back, the simulator returns to it. The order logic on its
own, and the reference sketch tied to the same rules (it cannot be compiled here)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.check.mqtt_probe import Identity, Session, Target, session
from iotfleet.device.contract import Bundle
from iotfleet.device.image import device_bundle
from iotfleet.fleet.context import FleetContext
from iotfleet.gateway import Backoff, GatewaySimulator
from iotfleet.gateway.failover import PROBE_TIMEOUT, RETURN_INTERVAL, BrokerOrder, listens
from iotfleet.roles.mosquitto.render import service_files
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto
from tests.support.waiting import wait_until
from tests.unit.gateway_helpers import REPO, GatewayFleet, gateway_environment

SKETCH = REPO / "files/firmware/iotfleet-gateway/src/main.cpp"
TELEMETRY = "devices/gw-1/telemetry/state"


@dataclass
class Pair:
    """Two brokers of the same fleet on loopback; the first may be stopped and started."""

    ctx: FleetContext
    bundle: Bundle
    ports: tuple[int, int]
    configs: tuple[str, str]
    workdirs: tuple[Path, Path]

    def broker(self, index: int) -> AbstractContextManager[Path]:
        return running_mosquitto(self.configs[index], self.workdirs[index], [self.ports[index]])

    def consumer(self, index: int) -> AbstractContextManager[Session]:
        ops = Identity(self.ctx.pki.certificate_pem("ops"), self.ctx.pki.private_key_pem("ops"))
        return session(Target("localhost", self.ports[index], self.ctx.pki.ca_chain_pem()), ops)

    def simulator(self) -> GatewaySimulator:
        return GatewaySimulator(
            self.bundle,
            brokers=[("localhost", port) for port in self.ports],
            telemetry_interval=0.2,
            return_interval=0.5,
            backoff=Backoff(initial=0.05, maximum=0.2),
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    home = tmp_path_factory.mktemp("home")
    ports = (free_port(), free_port())
    with gateway_environment(home):
        gateways = GatewayFleet(home, [{"id": "gw-1"}], broker_port=ports[0])
        ctx = gateways.context([{"port": "socket://127.0.0.1:1", "device": "gw-1"}])
        broker = ctx.fleet.brokers[0]
        config, files = service_files(ctx, broker)
        configs: list[str] = []
        workdirs: list[Path] = []
        for port in ports:
            work = tmp_path_factory.mktemp(f"broker-{port}")
            paths: dict[str, str] = {}
            for managed in [*broker_pki_files(ctx.pki, broker.name), *files]:
                local = work / managed.staged_name
                local.write_bytes(managed.content)
                paths[managed.path] = str(local)
            # The same broker's configuration, listening on this broker's port.
            configs.append(re.sub(rf"\b{ports[0]}\b", str(port), config.text(paths)))
            workdirs.append(work)
        bundle = device_bundle(ctx, "gw-1")
        yield Pair(ctx, bundle, ports, (configs[0], configs[1]), (workdirs[0], workdirs[1]))


def test_fails_over_to_the_second_broker_and_returns_to_the_first(pair: Pair) -> None:
    first, second = ("localhost", pair.ports[0]), ("localhost", pair.ports[1])
    simulator = pair.simulator()
    with pair.broker(1), pair.consumer(1) as at_second:
        assert at_second.subscribe("devices/gw-1/telemetry/#") == 1
        try:
            with pair.broker(0):
                simulator.start()
                assert simulator.wait_connected(10), simulator.stats.last_error
                assert simulator.broker == first  # the image's first broker
            # The first broker died with the block: the gateway goes on to the second.

            def on_the_second() -> bool:
                """gw-1 is connected to the second broker"""
                return simulator.broker == second

            wait_until(on_the_second, timeout=30)
            # It publishes there: its telemetry reaches a consumer on the second broker.
            assert at_second.wait_for_message(TELEMETRY, timeout=10)
            assert json.loads(at_second.messages(TELEMETRY)[-1].payload)["device"] == "gw-1"
            assert simulator.stats.moves_back == 0

            # The first broker comes back: the gateway returns to it and publishes there.
            with pair.broker(0), pair.consumer(0) as at_first:
                assert at_first.subscribe("devices/gw-1/telemetry/#") == 1

                def on_the_first() -> bool:
                    """gw-1 is back on the first broker"""
                    return simulator.broker == first

                wait_until(on_the_first, timeout=30)
                assert at_first.wait_for_message(TELEMETRY, timeout=10)
                assert simulator.stats.moves_back == 1
                # And it stays there: from the first broker it looks nowhere else.
                connects, sent = simulator.stats.connects, simulator.stats.telemetry_sent
                wait_until(lambda: simulator.stats.telemetry_sent >= sent + 10, timeout=30)
                assert simulator.stats.connects == connects and simulator.broker == first
                simulator.stop()
        finally:
            simulator.stop()


def test_stays_on_the_second_broker_while_the_first_is_down(pair: Pair) -> None:
    """Looks at the first broker find it closed: no move, no reconnect at the second."""
    with pair.broker(1):
        simulator = pair.simulator().start()
        try:
            wait_until(lambda: simulator.broker == ("localhost", pair.ports[1]), timeout=30)
            seen = simulator.stats.connects
            sent = simulator.stats.telemetry_sent
            # 20 readings at 0.2 s: several return intervals (0.5 s) have passed.
            wait_until(lambda: simulator.stats.telemetry_sent >= sent + 20, timeout=30)
            assert simulator.stats.connects == seen and simulator.stats.moves_back == 0
        finally:
            simulator.stop()
    assert simulator.stats.connect_failures >= 1  # the first broker was tried, and refused


def test_a_failed_move_back_returns_at_once_to_the_broker_it_left(pair: Pair) -> None:
    """A first broker that listens but is no broker (it hangs up at once): each look finds it
    listening, the move back fails, and the gateway goes straight back to the third broker,
    not round the list through the dead second one."""
    with socket.socket() as impostor, pair.broker(1):
        impostor.bind(("127.0.0.1", 0))
        impostor.listen(8)
        threading.Thread(target=_hang_up, args=(impostor,), daemon=True).start()
        third = ("localhost", pair.ports[1])
        simulator = GatewaySimulator(
            pair.bundle,
            brokers=[("localhost", impostor.getsockname()[1]), ("localhost", free_port()), third],
            telemetry_interval=0.2,
            return_interval=0.3,
            backoff=Backoff(initial=0.05, maximum=0.2),
        ).start()
        try:

            def back_on_the_third() -> bool:
                """moved back twice, and each failed move back cost one attempt only"""
                stats = simulator.stats
                moves = stats.moves_back
                return (
                    moves >= 2
                    and simulator.broker == third
                    and stats.connect_failures == 2 + moves  # the first two, once each
                )

            wait_until(back_on_the_third, timeout=30)
        finally:
            simulator.stop()


def _hang_up(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            connection, _ = listener.accept()
            connection.close()


def test_broker_order_round_the_list_and_back() -> None:
    order = BrokerOrder(3)
    assert list(order.preferred()) == []  # on the first: nothing better
    order.failed()
    assert order.current == 1 and list(order.preferred()) == [0]
    order.failed()
    order.failed()
    assert order.current == 0  # round the list
    order.failed()
    order.failed()
    order.connected()
    assert order.current == 2
    order.move_back(0)
    assert order.current == 0 and order.left == 2
    order.failed()  # the move back failed: straight back to the broker it left
    assert order.current == 2 and order.left is None
    order.move_back(1)
    order.connected()
    assert order.left is None
    order.failed()  # a lost connection after a move back: the next one again
    assert order.current == 2
    single = BrokerOrder(1)
    single.failed()
    assert single.current == 0


def test_listens_tells_an_open_port_from_a_closed_one(pair: Pair) -> None:
    with pair.broker(1):
        assert listens("localhost", pair.ports[1])
    assert not listens("localhost", pair.ports[1])


def test_the_sketch_fails_over_and_returns_like_the_simulator() -> None:
    """The reference sketch cannot be compiled here: its source at least keeps the same
    interval and the same order rules (``BrokerOrder``)."""
    source = SKETCH.read_text()
    assert f"kReturnIntervalMs = {round(RETURN_INTERVAL * 1000)};" in source
    assert f"kProbeTimeoutMs = {round(PROBE_TIMEOUT * 1000)};" in source
    failed = source[source.index("void brokerFailed(") :]
    failed = failed[: failed.index("\n}\n")]
    assert "hostIndex = leftIndex;" in failed  # a failed move back: to the broker it left
    assert "hostIndex = (hostIndex + 1) % config.hostCount;" in failed  # else the next one
    probe = source[source.index("int preferredListening(") :]
    assert "for (int i = 0; i < hostIndex; i++)" in probe[: probe.index("\n}\n")]
    connect = source[source.index("bool connectBroker(") :]
    connect = connect[: connect.index("\n}\n")]
    assert "hostIndex + 1" not in connect  # dialling does not move on; failing does
    assert "leftIndex = -1;" in connect
    loop = source[source.index("void loop(") :]
    assert loop.index("brokerFailed();") < loop.index("preferredListening()")
    assert "hostIndex = preferred;" in loop and "leftIndex = hostIndex;" in loop
