"""Attacks on a lab broker's network edge (issue 10): password guessing is throttled per
source, SSH takes keys only and forwards nothing, and every way of widening the firewall is
named by `iotfleet check` until a rollout puts the ruleset back.

The lab is the session's bookworm lab of two brokers, rolled out with inventory/lab.py; the
attacks come from the control machine (and, as a second source, from the other broker).
"""

from __future__ import annotations

import secrets
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import paramiko
import pytest

from iotfleet.check.mqtt_probe import Identity, try_connect
from iotfleet.roles.ssh_hardening import DROPIN
from tests.integration.conftest import LabFactory
from tests.integration.test_compliance import Breakage, Broker, DeployedLab, _break_check_repair
from tests.support.broker_clients import target
from tests.support.flood import flood
from tests.support.rollout import run_pyinfra

pytestmark = pytest.mark.lab

CERT, PASSWORD = 8883, 8884
BURST = 60  # firewall_password_burst's default
LIMITED = ("--data", "firewall_password_limit_exempt=[]")  # the control machine not spared


@pytest.fixture(scope="module")
def deployed(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> DeployedLab:
    lab = lab_factory(suite="bookworm", brokers=2)
    deployed = DeployedLab(lab, tmp_path_factory.mktemp("firewall"))
    deployed.rollout()
    return deployed


def _rollout(deployed: DeployedLab, *extra: str) -> None:
    result = run_pyinfra(deployed.lab.name, "deploy/brokers.py", *extra)
    assert result.returncode == 0, result.explain()


# -- password guessing -------------------------------------------------------------------------


@pytest.fixture
def limited(deployed: DeployedLab) -> Iterator[DeployedLab]:
    """The lab with the control machine subject to the password listeners' limit."""
    _rollout(deployed, *LIMITED)
    try:
        yield deployed
    finally:
        deployed.rollout()


def test_password_guessing_is_throttled_per_source(limited: DeployedLab) -> None:
    lab = limited.lab
    broker, other = lab.hosts[0], lab.hosts[1]
    guesses = flood(broker.address, PASSWORD, per_second=200, seconds=1)
    beyond_burst = guesses.offered - BURST
    refused = guesses.offered - guesses.accepted
    assert guesses.accepted >= 1, guesses
    assert refused > beyond_burst / 2, f"most connections beyond the burst got in: {guesses}"

    # The certificate listener is not limited: the same flood gets every connection.
    devices = flood(broker.address, CERT, per_second=200, seconds=1)
    assert devices.accepted == devices.offered, devices

    # Another source is not hurt by this one's flood.
    lab.ssh(other, f"timeout 5 bash -c 'exec 3<>/dev/tcp/{broker.address}/{PASSWORD}'")

    # A normal client's retries get through once the bucket refills (one a second).
    ctx = limited.context()
    wallboard = Identity(
        username="wallboard", password=ctx.passwords["wallboard"].get_secret_value()
    )
    result = try_connect(target(ctx, broker.fqdn, PASSWORD), wallboard, timeout=30)
    assert result.accepted, result.detail


# -- SSH ---------------------------------------------------------------------------------------


def test_ssh_only_from_firewall_ssh_sources(deployed: DeployedLab) -> None:
    """The lab allows SSH from its control machine only: another lab host gets no connection
    to port 22, while it still reaches the broker's MQTT listener."""
    lab = deployed.lab
    broker, other = lab.hosts[0], lab.hosts[1]
    reach = f"timeout 5 bash -c 'exec 3<>/dev/tcp/{broker.address}/{{port}}'"
    assert lab.ssh(other, reach.format(port=CERT), check=False).returncode == 0
    assert lab.ssh(other, reach.format(port=22), check=False).returncode != 0
    _sshd_socket(broker.address).close()


TEST_DROPIN = "/etc/ssh/sshd_config.d/50-itest-passwords.conf"


def _sshd_socket(address: str) -> socket.socket:
    """A connection to sshd; right after a reload sshd re-executes itself and refuses new
    connections for a moment (sessions already open are not affected)."""
    for _ in range(100):
        try:
            return socket.create_connection((address, 22), timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.1)
    raise AssertionError(f"sshd on {address} does not accept connections")


def _password_login(address: str, password: str) -> bool:
    transport = paramiko.Transport(_sshd_socket(address))
    try:
        transport.start_client(timeout=10)
        transport.auth_password("root", password)
        return transport.is_authenticated()
    except paramiko.AuthenticationException:
        return False
    finally:
        transport.close()


def _forward_reaches_sshd(deployed: DeployedLab) -> tuple[bool, str]:
    """``ssh -L`` to the broker's own sshd: whether the SSH banner comes through the tunnel."""
    host = deployed.lab.hosts[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    _sshd_socket(host.address).close()
    argv = deployed.lab.ssh_argv(host, "sleep 20")
    argv[1:1] = ["-L", f"127.0.0.1:{local}:127.0.0.1:22"]
    tunnel = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                conn = socket.create_connection(("127.0.0.1", local), timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("ssh -L never listened")
        with conn:
            conn.settimeout(5)
            try:
                banner = conn.recv(64)
            except TimeoutError:
                banner = b""
        return banner.startswith(b"SSH-"), ""
    finally:
        _stop(tunnel)


def _stop(process: subprocess.Popen[str]) -> None:
    """End ``process`` (SIGTERM, then SIGKILL if it lingers) and print what it wrote."""
    process.terminate()
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    if stderr:
        print(stderr)


def _allow_password_logins(deployed: DeployedLab, password: str) -> None:
    """What an unhardened host may have: root with a password, password logins on."""
    deployed.ssh(
        f"printf 'root:%s\\n' {shlex.quote(password)} | chpasswd && "
        "printf 'PasswordAuthentication yes\\nKbdInteractiveAuthentication yes\\n"
        "PermitRootLogin yes\\n' "
        f"> {TEST_DROPIN} && sshd -t && systemctl reload ssh"
    )


def test_sshd_hardening_refuses_passwords_and_forwards(deployed: DeployedLab) -> None:
    host = deployed.lab.hosts[0]
    shadow = deployed.ssh("getent shadow root | cut -d: -f2").strip()
    password = secrets.token_urlsafe(18)
    try:
        # Without the hardening, both attacks work on this host: the test can fail.
        _rollout(deployed, "--data", "ssh_hardening_enabled=false")
        _sshd_socket(host.address).close()
        assert deployed.ssh(f"test -e {DROPIN} || echo absent").strip() == "absent"
        _allow_password_logins(deployed, password)
        assert _password_login(host.address, password)
        assert _forward_reaches_sshd(deployed)[0]

        # Hardening on (the lab's default): the same attacks fail, keys still work.
        _rollout(deployed)
        _sshd_socket(host.address).close()
        assert not _password_login(host.address, password)
        assert not _forward_reaches_sshd(deployed)[0]
        assert deployed.ssh("echo key login works").strip() == "key login works"
        again = run_pyinfra(deployed.lab.name, "deploy/brokers.py")
        assert again.returncode == 0, again.explain()
        assert again.changed == 0, again.explain()
    finally:
        deployed.ssh(
            f"rm -f {TEST_DROPIN} && usermod -p {shlex.quote(shadow)} root && sshd -t && "
            "systemctl reload ssh"
        )
        deployed.rollout()


def test_password_inventory_is_refused_before_any_host(deployed: DeployedLab) -> None:
    result = run_pyinfra(
        deployed.lab.name, "deploy/brokers.py", "--data", "ssh_password=not-used-here"
    )
    assert result.returncode != 0
    assert "ssh_hardening_enabled" in result.output and "ssh_password" in result.output
    assert "Starting operation" not in result.output, result.explain()


# -- the compliance check names every widened firewall ---------------------------------------


def _nft(*commands: str) -> str:
    return " && ".join(f"nft {c}" for c in commands)


def _on_broker(command: str) -> Callable[[Broker], None]:
    """A breakage: ``command`` run as root on the broken broker."""

    def apply(lab: Broker) -> None:
        lab.ssh(command)

    return apply


DROP_LIMIT = (
    "for h in $(nft -a list chain inet iotfleet input | "
    "sed -n 's/.*@password_sources.* # handle \\([0-9]*\\)$/\\1/p'); do "
    "nft delete rule inet iotfleet input handle $h; done"
)
SECOND_TABLE = _nft(
    "add table inet itest_open",
    "add chain inet itest_open input '{ type filter hook input priority 10; policy accept; }'",
)

FIREWALL_BREAKAGES = [
    Breakage(
        "accepts widened in the iotfleet table",
        _on_broker(
            _nft(
                'add rule inet iotfleet input iif "eth0" accept',
                "add rule inet iotfleet input ip saddr 0.0.0.0/0 accept",
                "add rule inet iotfleet input tcp dport 1-65535 accept",
                "add rule inet iotfleet input tcp dport 9999 accept",
                "add rule inet iotfleet input tcp dport 22 accept",
            )
        ),
        "firewall",
        {
            "test_firewall_loaded": [
                "the firewall on {host} accepts every connection arriving on eth0",
                "the firewall on {host} accepts every connection from 0.0.0.0/0",
                "the firewall on {host} accepts the port range 1-65535 from anywhere",
                "the firewall on {host} opens TCP 9999, which the inventory does not",
                "the firewall on {host} accepts SSH (port 22) from anywhere (0.0.0.0/0 and "
                "::/0); firewall_ssh_sources allows only",
            ]
        },
    ),
    Breakage(
        "another table accepting, a jump to accept-all, the limit removed",
        _on_broker(
            " && ".join(
                [
                    SECOND_TABLE,
                    _nft(
                        "add chain inet iotfleet allow_all",
                        "add rule inet iotfleet allow_all accept",
                        "add rule inet iotfleet input jump allow_all",
                    ),
                    DROP_LIMIT,
                ]
            )
        ),
        "firewall",
        {
            "test_firewall_loaded": [
                "the firewall on {host} does not drop by default: chain inet itest_open input "
                "(input hook, priority 10) has policy accept",
                "the firewall on {host} accepts every connection from anywhere (chain inet "
                "iotfleet allow_all, reached as chain inet iotfleet input jumps to allow_all",
                "the firewall on {host} does not limit new IPv4 connections per source to "
                "password listener(s) 8443, 8884, 8885",
                "the firewall on {host} does not limit new IPv6 connections per source",
            ]
        },
        # Other tables are not iotfleet's: a rollout leaves them alone.
        cleanup="nft delete table inet itest_open || true",
    ),
    Breakage(
        "sshd drop-in loosened",
        _on_broker(
            "sed -i -e 's/^PasswordAuthentication no/PasswordAuthentication yes/' "
            "-e 's/^AllowTcpForwarding no/AllowTcpForwarding yes/' "
            "-e 's/^DisableForwarding yes/DisableForwarding no/' "
            f"-e '/^AuthenticationMethods/d' {DROPIN} && sshd -t && systemctl reload ssh"
        ),
        "ssh",
        {
            "test_sshd_hardened": [
                "sshd on {host} has passwordauthentication yes, expected no",
                "sshd on {host} has allowtcpforwarding yes, expected no",
                "sshd on {host} has authenticationmethods any, expected publickey",
                "sshd on {host} offers password logins to anyone who connects",
            ]
        },
    ),
]


@pytest.mark.parametrize("breakage", FIREWALL_BREAKAGES, ids=[b.name for b in FIREWALL_BREAKAGES])
def test_check_names_each_widening_and_a_rollout_repairs_it(
    deployed: DeployedLab, breakage: Breakage
) -> None:
    _break_check_repair(deployed, breakage)
