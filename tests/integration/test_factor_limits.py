"""Every factor enforced, nothing exhaustible without credentials (issue 10), on lab brokers.

The bookworm lab is rolled out with inventory/lab.py (8883 certificates, 8884 passwords, 8885
certificate+password, 8443 websockets passwords). From outside, with paho-mqtt, the attacks
of the issue fail; inside, each new compliance check is seen failing on a broker broken over
SSH one way at a time, and passing again after a rollout repairs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from iotfleet.check.mqtt_probe import Identity, Target, session, try_connect
from iotfleet.fleet.credentials import health_password
from iotfleet.model.own_identities import health_identity_name, health_topic
from iotfleet.model.settings import MosquittoSettings
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabFactory
from tests.integration.test_compliance import DeployedLab, _listener_blocks

pytestmark = pytest.mark.lab

NOT_AUTHORIZED = 0x87
CERT, PASSWORD, BOTH, WEBSOCKETS = 8883, 8884, 8885, 8443


_SPEC = layout.password_file_spec(PASSWORD)  # what the file check expects of it


@pytest.fixture(scope="module")
def deployed(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> DeployedLab:
    lab = lab_factory(suite="bookworm", brokers=2)
    deployed = DeployedLab(lab, tmp_path_factory.mktemp("factors"))
    deployed.rollout()
    return deployed


def _target(deployed: DeployedLab, port: int) -> Target:
    ca = deployed.context().pki.ca_chain_pem()
    return Target(deployed.broken, port, ca, websockets=port == WEBSOCKETS)


def _identity(deployed: DeployedLab, cert_of: str | None, login: str | None) -> Identity:
    ctx = deployed.context()
    return Identity(
        ctx.pki.certificate_pem(cert_of) if cert_of else None,
        ctx.pki.private_key_pem(cert_of) if cert_of else None,
        login,
        ctx.passwords[login].get_secret_value() if login else None,
    )


# -- the attacks, from outside ------------------------------------------------------------------


def test_two_factor_clients_password_alone_is_refused(deployed: DeployedLab) -> None:
    password_only = _identity(deployed, None, "control-room")
    for port in (PASSWORD, WEBSOCKETS):
        result = try_connect(_target(deployed, port), password_only)
        assert not result.accepted and result.stage == "connack", (port, result)
    # The password client still logs in there.
    assert try_connect(_target(deployed, PASSWORD), _identity(deployed, None, "wallboard")).accepted


def test_another_certificate_with_control_rooms_login_is_refused(deployed: DeployedLab) -> None:
    target = _target(deployed, BOTH)
    assert try_connect(target, _identity(deployed, "control-room", "control-room")).accepted
    stolen = _identity(deployed, "sensor-1", "control-room")
    result = try_connect(target, stolen)
    assert not result.accepted and result.stage == "connack", result
    journal = deployed.ssh("journalctl -u mosquitto -o cat --no-pager -n 200")
    assert "iotfleet_auth: refused login of 'control-room' from " in journal
    assert f"on listener {BOTH}: client certificate CN 'sensor-1' is not the username" in journal


def test_health_identity_is_refused_from_outside(deployed: DeployedLab) -> None:
    ctx = deployed.context()
    broker = deployed.broken
    name = health_identity_name(broker)
    identity = Identity(
        ctx.pki.certificate_pem(name),
        ctx.pki.private_key_pem(name),
        name,
        health_password(ctx.secrets, broker).get_secret_value(),
    )
    for port in (PASSWORD, BOTH):
        result = try_connect(_target(deployed, port), identity)
        assert not result.accepted and result.stage == "connack", (port, result)
    # On the certificate listener no login callback runs; every topic is refused instead.
    cert_only = Identity(identity.certificate_pem, identity.private_key_pem)
    with session(_target(deployed, CERT), cert_only) as client:
        assert client.publish(health_topic(broker)) == NOT_AUTHORIZED
    # From the broker itself the health check still passes (the rollout relies on it).
    deployed.ssh(
        f"XDG_CONFIG_HOME={layout.HEALTH_DIR} timeout 10 mosquitto_pub -h 127.0.0.1 -p {BOTH} "
        f"--cafile {layout.CA_CHAIN} --cert {layout.HEALTH_CERT} --key {layout.HEALTH_KEY} "
        f"--insecure -q 1 -t {health_topic(broker)} -m ok"
    )


def test_limits_are_rendered_live(deployed: DeployedLab) -> None:
    broker = deployed.context().fleet.broker(deployed.broken)
    settings = broker.mosquitto
    conf = deployed.ssh(f"cat {layout.CONFIG}")
    assert f"\nmax_packet_size {settings.max_packet_size}\n" in conf
    memory = deployed.ssh("systemctl show mosquitto -p MemoryMax --value").strip()
    assert memory == str(settings.memory_ceiling_mb * 1024 * 1024)
    assert (
        layout.LEGACY_PASSWORD_FILE.rsplit("/", 1)[1]
        not in deployed.ssh(f"ls {layout.CONFIG_DIR}").split()
    )


# -- each new check, failing on a broken broker ------------------------------------------------


def _drop_plugin(port: int) -> Callable[[int, str], str]:
    def change(block_port: int, block: str) -> str:
        if block_port != port:
            return block
        lines = block.splitlines(keepends=True)
        return "".join(line for line in lines if not line.startswith("plugin"))

    return change


def break_password_file(lab: DeployedLab) -> None:
    lab.ssh(
        f"grep '^control-room:' {layout.password_file(BOTH)} >> {layout.password_file(PASSWORD)}"
        " && systemctl reload mosquitto"
    )


def break_packet_size(lab: DeployedLab) -> None:
    lab.edit(layout.CONFIG, lambda c: "".join(
        line for line in c.splitlines(keepends=True) if not line.startswith("max_packet_size")
    ))  # fmt: skip
    lab.restart()


def break_memory_max(lab: DeployedLab) -> None:
    lab.edit(layout.DROPIN, lambda c: "".join(
        line for line in c.splitlines(keepends=True) if not line.startswith("MemoryMax=")
    ))  # fmt: skip
    lab.ssh("systemctl daemon-reload")
    lab.restart()


def break_password_file_mode(lab: DeployedLab) -> None:
    lab.ssh(f"chmod 0644 {layout.password_file(PASSWORD)}")


def break_plugin(lab: DeployedLab) -> None:
    lab.edit(layout.CONFIG, lambda c: _listener_blocks(c, _drop_plugin(BOTH)))
    lab.restart()


@dataclass(frozen=True)
class Breakage:
    name: str
    apply: Callable[[DeployedLab], None]
    check: str
    phrases: list[str]  # {host} = the broken broker
    markexpr: str = "config"


BREAKAGES = [
    Breakage(
        "control-room in the 8884 password file",
        break_password_file,
        "test_password_file_holds_only_this_listeners_logins",
        [
            f"{layout.password_file(PASSWORD)} on {{host}} lets client control-room log in with "
            f"a password on listener {PASSWORD} (password), which the inventory does not"
        ],
    ),
    Breakage(
        "the 8884 password file made 0644",
        break_password_file_mode,
        "test_owner_and_mode",
        [
            f"{layout.password_file(PASSWORD)} on {{host}} is 0644 root:mosquitto, expected "
            f"{_SPEC.mode} {_SPEC.owner}:{_SPEC.group} (readable by every local user)"
        ],
        markexpr="files",
    ),
    Breakage(
        "max_packet_size removed",
        break_packet_size,
        "test_packets_and_queues_bounded",
        [
            "max_packet_size on {host} is not set (unlimited), expected "
            f"{MosquittoSettings().max_packet_size}: a CONNECT announcing 256 MiB is buffered "
            "before authentication"
        ],
    ),
    Breakage(
        "MemoryMax removed",
        break_memory_max,
        "test_memory_ceiling",
        ["mosquitto.service on {host} has MemoryMax=infinity (no limit), expected"],
    ),
    Breakage(
        "the plugin dropped from 8885",
        break_plugin,
        "test_auth_plugin_loaded",
        [
            f"iotfleet's plugin is not loaded on {{host}}:{BOTH} (plugin is not set, expected "
            f"{layout.AUTH_PLUGIN}): any fleet certificate logs in with another identity's "
            "password"
        ],
    ),
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.name for b in BREAKAGES])
def test_check_names_the_breakage_and_a_rollout_repairs_it(
    deployed: DeployedLab, breakage: Breakage
) -> None:
    host = deployed.broken
    scope = ["-m", breakage.markexpr, "--limit", host]
    try:
        breakage.apply(deployed)
        run = deployed.check(*scope)
        assert run.returncode == 1, run.explain()
        failed = run.failed_checks()
        assert breakage.check in failed, run.explain()
        for phrase in breakage.phrases:
            words = phrase.format(host=host)
            assert any(words in message for message in failed[breakage.check]), (
                words,
                failed[breakage.check],
            )
        # Only what was broken fails.
        assert set(failed) == {breakage.check}, run.explain()
    finally:
        deployed.rollout()
    repaired = deployed.check(*scope)
    assert repaired.returncode == 0, f"after the rollout:\n{repaired.explain()}"
