"""Hardened Mosquitto rolled out with the real pyinfra CLI on real lab hosts (issue 4).

Runs on bookworm and trixie. The lab fleet (inventory/lab.py + group_data/lab.py) has four
listeners: 8883 certificate, 8884 password over TLS, 8885 certificate + password, 8443
websockets with passwords.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.check.mqtt_probe import (
    NOT_AUTHORIZED,
    Identity,
    Target,
    session,
    succeeded,
    try_connect,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.credentials import password_slot
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabFactory, RunningLab
from tests.support.broker_clients import MosquittoCli, identity_of, refused_identity, target
from tests.support.fresh_host import wipe_iotfleet
from tests.support.lab_fleet import lab_context
from tests.support.rollout import (
    Rollout,
    changed_operations,
    commands_by_host,
    run_iotfleet,
    run_pyinfra,
)

pytestmark = pytest.mark.lab

CERT, PASSWORD, BOTH, WEBSOCKETS = 8883, 8884, 8885, 8443


@dataclass
class DeployedLab:
    lab: RunningLab
    first: Rollout

    @property
    def ctx(self) -> FleetContext:
        # Re-read every time: tests rotate passwords and certificates.
        return lab_context(self.lab.name)

    @property
    def brokers(self) -> list[str]:
        return [h.fqdn for h in self.lab.hosts]

    def ssh(self, broker: str, command: str, check: bool = True) -> str:
        host = next(h for h in self.lab.hosts if h.fqdn == broker)
        return self.lab.ssh(host, command, check=check).stdout

    def main_pid(self, broker: str) -> int:
        return int(self.ssh(broker, "systemctl show -p MainPID --value mosquitto").strip())

    def starts(self, broker: str) -> int:
        """How often the real service has started (the spare-port test run logs elsewhere)."""
        log = self.ssh(broker, "journalctl -u mosquitto -o cat --no-pager")
        return len(re.findall(r"mosquitto version \S+ starting", log))

    def wait_for_listener(self, broker: str, port: int) -> None:
        self.ssh(
            broker,
            f"for i in $(seq 50); do ss -Htln 'sport = :{port}' | grep -q . && exit 0; "
            "sleep 0.1; done; exit 1",
        )

    def rollout(self, *extra: str) -> Rollout:
        return run_pyinfra(self.lab.name, "deploy.py", *extra)


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def deployed(request: pytest.FixtureRequest, lab_factory: LabFactory) -> DeployedLab:
    lab = lab_factory(suite=request.param, brokers=2)
    for host in lab.hosts:  # other modules may have rolled the shared lab out already
        wipe_iotfleet(lab, host)
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()
    return DeployedLab(lab, first)


@pytest.fixture
def cli(tmp_path: Path, deployed: DeployedLab) -> MosquittoCli:
    return MosquittoCli(tmp_path, deployed.ctx.pki.ca_chain_pem())


def test_first_rollout_changed_every_broker_and_second_changes_nothing(
    deployed: DeployedLab,
) -> None:
    assert deployed.first.changed > 0
    again = deployed.rollout()
    assert again.returncode == 0, again.explain()
    assert (again.changed, again.errors) == (0, 0), again.explain()
    assert again.unchanged == again.operations > 0


def test_a_no_change_rollout_reads_each_broker_in_one_command(deployed: DeployedLab) -> None:
    """Issue 16: the no-change path is one remote command per broker (the host state read),
    and drift is still found: a file changed by hand is put back by the one operation that
    owns it, with the fresh read after it."""
    quiet = deployed.rollout("-vvv")
    assert quiet.returncode == 0 and quiet.changed == 0, quiet.explain()
    brokers = [host.fqdn for host in deployed.lab.hosts if host.name.startswith("broker")]
    once = dict.fromkeys(brokers, 1)
    assert commands_by_host(quiet.output, brokers) == once, quiet.output[-3000:]

    broker = brokers[0]
    deployed.ssh(broker, f"chmod 0644 {layout.APPLY_SCRIPT}")
    mended = deployed.rollout("-vvv")
    assert mended.returncode == 0 and mended.changed == 1, mended.explain()
    assert changed_operations(mended.output) == [
        "Hardened Mosquitto | Install the apply script (test, restart, health check, rollback)"
    ], mended.output[-3000:]
    assert deployed.ssh(broker, f"stat -c %a {layout.APPLY_SCRIPT}").strip() == "755"
    again = deployed.rollout("-vvv")
    assert again.changed == 0, again.explain()
    assert commands_by_host(again.output, brokers) == once, again.output[-3000:]


def test_device_certificate_connects_and_publishes_to_its_own_topic(
    deployed: DeployedLab, cli: MosquittoCli
) -> None:
    ctx = deployed.ctx
    device = identity_of(ctx, "sensor-1")
    for broker in deployed.brokers:
        with session(target(ctx, broker, CERT), device) as client:
            assert succeeded(client.publish("devices/sensor-1/telemetry/temp", b"21.5"))
            assert client.publish("devices/sensor-2/telemetry/temp") == NOT_AUTHORIZED
        published = cli.publish(broker, CERT, device, "devices/sensor-1/telemetry/temp")
        assert published.returncode == 0, published.stderr


@pytest.mark.parametrize("kind", ["anonymous", "foreign", "revoked", "expired"])
def test_bad_certificates_are_refused(deployed: DeployedLab, cli: MosquittoCli, kind: str) -> None:
    ctx = deployed.ctx
    identity = refused_identity(ctx, kind)
    for broker in deployed.brokers:
        for port in (CERT, BOTH):
            result = try_connect(target(ctx, broker, port), identity)
            assert not result.accepted, (broker, port, result)
        refused = cli.publish(broker, CERT, identity, "devices/sensor-1/telemetry/x")
        assert refused.returncode != 0, (kind, refused.stdout)


def test_tls_1_1_is_refused(deployed: DeployedLab, cli: MosquittoCli) -> None:
    ctx = deployed.ctx
    device = identity_of(ctx, "sensor-1")
    broker = deployed.brokers[0]
    result = try_connect(target(ctx, broker, CERT), device, tls_maximum=ssl.TLSVersion.TLSv1_1)
    assert not result.accepted and "TLS" in result.detail
    old = cli.publish(broker, CERT, device, "devices/sensor-1/telemetry/x", legacy_tls=True)
    assert old.returncode != 0 and "TLS error" in old.stderr, old.stderr


def test_passwords_over_tls(deployed: DeployedLab, cli: MosquittoCli) -> None:
    ctx = deployed.ctx
    good = Identity(username="wallboard", password=ctx.passwords["wallboard"].get_secret_value())
    for broker in deployed.brokers:
        tgt = target(ctx, broker, PASSWORD)
        assert try_connect(tgt, good).accepted
        for bad in (
            Identity(username="wallboard", password="not-the-password-at-all"),
            Identity(username="#", password=""),
            Identity(username="wallboard", password=""),
            Identity(),
        ):
            assert not try_connect(tgt, bad).accepted, bad.username
        wrong = Identity(username="wallboard", password="not-the-password-at-all")
        assert cli.publish(broker, PASSWORD, wrong, "devices/x/status").returncode != 0


def test_websockets_listener_takes_passwords_over_tls_only(deployed: DeployedLab) -> None:
    ctx = deployed.ctx
    password = ctx.passwords["wallboard"].get_secret_value()
    good = Identity(username="wallboard", password=password)
    for broker in deployed.brokers:
        tgt = Target(broker, WEBSOCKETS, ctx.pki.ca_chain_pem(), websockets=True)
        assert try_connect(tgt, good).accepted
        assert not try_connect(tgt, Identity(username="wallboard", password="x" * 32)).accepted
        assert not try_connect(tgt, Identity()).accepted
        old_tls = try_connect(tgt, good, tls_maximum=ssl.TLSVersion.TLSv1_1)
        assert not old_tls.accepted and "TLS" in old_tls.detail


def test_bad_inventory_value_stops_the_run_before_any_host_is_touched(
    deployed: DeployedLab,
) -> None:
    before = {b: deployed.ssh(b, f"sha256sum {layout.CONFIG}") for b in deployed.brokers}
    bad = deployed.rollout("--data", 'mosquitto_listeners=[{"port": 70000}]')
    assert bad.returncode != 0
    # One line for the problem every broker shares, naming each broker.
    shared = f"hosts {', '.join(deployed.brokers)}: mosquitto_listeners[0].port"
    assert shared in bad.output, bad.explain()
    for broker in deployed.brokers:
        assert deployed.ssh(broker, f"sha256sum {layout.CONFIG}") == before[broker]
    assert "Starting operation" not in bad.output, bad.explain()


def test_two_factor_listener(deployed: DeployedLab) -> None:
    ctx = deployed.ctx
    both = identity_of(ctx, "control-room", password=True)
    broker = deployed.brokers[0]
    tgt = target(ctx, broker, BOTH)
    assert try_connect(tgt, both).accepted
    cert_only = Identity(both.certificate_pem, both.private_key_pem)
    password_only = Identity(username=both.username, password=both.password)
    assert not try_connect(tgt, cert_only).accepted
    assert not try_connect(tgt, password_only).accepted
    # iotfleet's plugin (one binary for bookworm's 2.0.11 and trixie's 2.0.21): another fleet
    # certificate with control-room's login is refused, and the refusal is logged.
    sensor = identity_of(ctx, "sensor-1")
    stolen = Identity(sensor.certificate_pem, sensor.private_key_pem, both.username, both.password)
    assert not try_connect(tgt, stolen).accepted
    journal = deployed.ssh(broker, "journalctl -u mosquitto -o cat --no-pager -n 200")
    assert f"on listener {BOTH}: client certificate CN 'sensor-1' is not the username" in journal


def test_device_cannot_read_other_devices_everything_or_sys(
    deployed: DeployedLab, cli: MosquittoCli
) -> None:
    ctx = deployed.ctx
    broker = deployed.brokers[0]
    tgt = target(ctx, broker, CERT)
    with (
        session(tgt, identity_of(ctx, "sensor-1")) as spy,
        session(tgt, identity_of(ctx, "ops")) as admin,
        session(tgt, identity_of(ctx, "sensor-2")) as other,
    ):
        for topic in ("devices/sensor-2/#", "#", "$SYS/#"):
            spy.subscribe(topic)
            admin.subscribe(topic)
        assert succeeded(other.publish("devices/sensor-2/telemetry/temp", b"19.0"))
        assert admin.wait_for_message("devices/sensor-2/telemetry/", timeout=5)
        assert admin.wait_for_message("$SYS/", timeout=5)
        assert not spy.wait_for_message("", timeout=1), [m.topic for m in spy.messages()]
    device = identity_of(ctx, "sensor-1")
    for topic in ("$SYS/#", "#"):
        got = cli.subscribe_once(broker, CERT, device, topic, wait=2)
        assert got.stdout == "", (topic, got.stdout)
    admin_sys = cli.subscribe_once(broker, CERT, identity_of(ctx, "ops"), "$SYS/#", wait=5)
    assert admin_sys.stdout.startswith("$SYS/"), admin_sys


def test_files_are_owned_and_locked_down(deployed: DeployedLab) -> None:
    broker = deployed.brokers[0]
    stat = deployed.ssh(
        broker,
        "stat -c '%n %U:%G %a' /etc/mosquitto /etc/mosquitto/certs "
        + " ".join(
            [
                layout.CONFIG,
                layout.ACL_FILE,
                layout.password_file(8884),
                layout.AUTH_PLUGIN,
                layout.CA_CHAIN,
                layout.SERVER_CERT,
                layout.SERVER_KEY,
                layout.CRL,
                layout.HEALTH_KEY,
            ]
        ),
    )
    modes = dict(line.split(" ", 1) for line in stat.splitlines())
    assert modes == {
        "/etc/mosquitto": "root:mosquitto 750",
        "/etc/mosquitto/certs": "root:mosquitto 750",
        layout.CONFIG: "root:mosquitto 640",
        layout.ACL_FILE: "root:mosquitto 640",
        layout.password_file(8884): "root:mosquitto 640",
        layout.AUTH_PLUGIN: "root:root 644",
        layout.CA_CHAIN: "root:mosquitto 640",
        layout.SERVER_CERT: "root:mosquitto 640",
        layout.SERVER_KEY: "root:mosquitto 640",
        layout.CRL: "root:mosquitto 640",
        layout.HEALTH_KEY: "root:root 600",
    }
    writable = deployed.ssh(
        broker, "runuser -u mosquitto -- sh -c 'test -w /etc/mosquitto && echo writable' || true"
    )
    assert writable.strip() == ""
    leaked = deployed.ssh(broker, "grep -rl 'PRIVATE KEY' /tmp /var/tmp 2>/dev/null || true")
    assert leaked.strip() == ""


def test_sandbox_is_in_effect_and_scores_low(deployed: DeployedLab) -> None:
    broker = deployed.brokers[0]
    props = dict(
        line.split("=", 1)
        for line in deployed.ssh(
            broker,
            "systemctl show mosquitto -p User -p NoNewPrivileges -p ProtectSystem "
            "-p ProtectHome -p PrivateTmp -p PrivateDevices -p CapabilityBoundingSet "
            "-p AmbientCapabilities -p LimitNOFILE -p UnitFileState -p ActiveState",
        ).splitlines()
    )
    assert props["User"] == "mosquitto"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["ProtectHome"] == "yes"
    assert props["PrivateTmp"] == "yes"
    assert props["PrivateDevices"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert props["AmbientCapabilities"] == ""
    assert int(props["LimitNOFILE"]) >= 20000
    assert (props["UnitFileState"], props["ActiveState"]) == ("enabled", "active")
    report = deployed.ssh(broker, "systemd-analyze security mosquitto --no-pager")
    found = re.search(r"Overall exposure level for mosquitto.service: ([\d.]+)", report)
    assert found, report[-2000:]
    score = float(found[1])
    assert score <= 1.5, report[-2000:]
    assert deployed.ssh(broker, "ps -o user= -C mosquitto").split() == ["mosquitto"]


def test_firewall_allows_ssh_and_listeners_only(deployed: DeployedLab) -> None:
    broker = deployed.brokers[0]
    table = deployed.ssh(broker, "nft list table inet iotfleet")
    assert "policy drop" in table and "tcp dport 22" in table
    # Something listens on 9999 on the broker, yet the firewall hides it.
    deployed.ssh(
        broker,
        "systemd-run --unit iotfleet-test-listener --collect /usr/sbin/mosquitto -p 9999",
    )
    try:
        deployed.wait_for_listener(broker, 9999)
        for port, reachable in ((22, True), (CERT, True), (WEBSOCKETS, True), (9999, False)):
            try:
                socket.create_connection((broker, port), timeout=2).close()
                connected = True
            except OSError:
                connected = False
            assert connected is reachable, port
    finally:
        deployed.ssh(broker, "systemctl stop iotfleet-test-listener", check=False)


def test_configuration_change_restarts_once(deployed: DeployedLab) -> None:
    broker = deployed.brokers[0]
    pid, starts = deployed.main_pid(broker), deployed.starts(broker)
    changed = deployed.rollout("--data", "mosquitto_message_size_limit=131072")
    try:
        assert changed.returncode == 0, changed.explain()
        assert deployed.starts(broker) == starts + 1
        assert deployed.main_pid(broker) != pid
        assert "message_size_limit 131072" in deployed.ssh(broker, f"cat {layout.CONFIG}")
    finally:
        restored = deployed.rollout()
        assert restored.returncode == 0, restored.explain()


def test_password_change_only_reloads(deployed: DeployedLab) -> None:
    ctx = deployed.ctx
    old = ctx.passwords["wallboard"].get_secret_value()
    ctx.secrets.forget(password_slot("wallboard"))
    new_ctx = deployed.ctx  # generates the new password
    new = new_ctx.passwords["wallboard"].get_secret_value()
    assert new != old
    pids = {b: deployed.main_pid(b) for b in deployed.brokers}
    starts = {b: deployed.starts(b) for b in deployed.brokers}
    changed = deployed.rollout()
    assert changed.returncode == 0, changed.explain()
    for broker in deployed.brokers:
        assert deployed.main_pid(broker) == pids[broker], "a password change must not restart"
        assert deployed.starts(broker) == starts[broker]
        tgt = target(new_ctx, broker, PASSWORD)
        assert try_connect(tgt, Identity(username="wallboard", password=new)).accepted
        assert not try_connect(tgt, Identity(username="wallboard", password=old)).accepted


class _Watcher(threading.Thread):
    """A device that stays connected and publishes while a rollout runs."""

    def __init__(self, ctx: FleetContext, broker: str) -> None:
        super().__init__(daemon=True)
        self.ctx, self.broker = ctx, broker
        self.stop = threading.Event()
        self.published = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with session(
                target(self.ctx, self.broker, CERT), identity_of(self.ctx, "sensor-2")
            ) as s:
                while not self.stop.is_set():
                    if succeeded(s.publish("devices/sensor-2/telemetry/alive")):
                        self.published += 1
                    else:
                        self.failures.append("publish refused")
                    time.sleep(0.1)
        except Exception as exc:
            self.failures.append(repr(exc))


@pytest.fixture
def watcher(deployed: DeployedLab) -> Iterator[_Watcher]:
    thread = _Watcher(deployed.ctx, deployed.brokers[0])
    thread.start()
    yield thread
    thread.stop.set()
    thread.join(timeout=30)


def test_broken_value_is_refused_and_broker_keeps_serving(
    deployed: DeployedLab, watcher: _Watcher
) -> None:
    broker = deployed.brokers[0]
    before = deployed.ssh(broker, f"sha256sum {layout.CONFIG}")
    pid = deployed.main_pid(broker)
    broken = deployed.rollout("--data", "mosquitto_ciphers_tls13=TLS_NO_SUCH_SUITE_GCM_SHA256")
    assert broken.returncode != 0
    assert "did not pass its test on spare ports; nothing was changed" in broken.output
    assert deployed.ssh(broker, f"sha256sum {layout.CONFIG}") == before
    assert deployed.main_pid(broker) == pid
    time.sleep(0.5)
    watcher.stop.set()
    watcher.join(timeout=30)
    assert watcher.failures == [] and watcher.published > 10


def test_config_that_fails_live_is_rolled_back(deployed: DeployedLab) -> None:
    broker = deployed.brokers[0]
    before = deployed.ssh(broker, f"sha256sum {layout.CONFIG}")
    # A squatter holds 9883 on every address: the spare-port test passes, the real start fails.
    deployed.ssh(
        broker, "systemd-run --unit iotfleet-test-squatter --collect /usr/sbin/mosquitto -p 9883"
    )
    deployed.wait_for_listener(broker, 9883)
    try:
        broken = deployed.rollout(
            "--data",
            'mosquitto_listeners=[{"port": 8883}, {"port": 8884, "auth": "password"},'
            ' {"port": 8885, "auth": "certificate+password"}, {"port": 9883}]',
        )
        assert broken.returncode != 0
        assert "rolled back to the last good configuration" in broken.output, broken.explain()
        assert deployed.ssh(broker, f"sha256sum {layout.CONFIG}") == before
        ctx = deployed.ctx
        assert try_connect(target(ctx, broker, CERT), identity_of(ctx, "sensor-1")).accepted
    finally:
        deployed.ssh(broker, "systemctl stop iotfleet-test-squatter", check=False)
        restored = deployed.rollout()
        assert restored.returncode == 0, restored.explain()


def test_revocation_restarts_brokers_and_cuts_the_old_certificate(deployed: DeployedLab) -> None:
    ctx = deployed.ctx
    stolen = identity_of(ctx, "sensor-2")
    broker = deployed.brokers[0]
    pid = deployed.main_pid(broker)
    revoked = run_iotfleet(
        "pki", "revoke", "sensor-2", "--reason", "keyCompromise", "--inventory",
        "inventory/lab.py", lab_name=deployed.lab.name,
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    rolled = deployed.rollout()
    assert rolled.returncode == 0, rolled.explain()
    assert deployed.main_pid(broker) != pid  # CRLs are only read at start
    fresh = deployed.ctx
    for b in deployed.brokers:
        assert not try_connect(target(fresh, b, CERT), stolen).accepted
        assert try_connect(target(fresh, b, CERT), identity_of(fresh, "sensor-2")).accepted
