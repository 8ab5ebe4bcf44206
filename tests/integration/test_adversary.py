"""The adversary checks (``iotfleet check -m attack``, issue 10) against real lab brokers: a
rollout of inventory/lab.py passes every one of them, and each hole an attacker used, reopened
on the first broker over SSH, makes its check fail naming the listener, the identity and the
factors, until a rollout (or reloading the firewall) closes it again.

Each breakage works on the broker-side layout of the fixes (per-listener password files, the
auth plugin, max_packet_size and memory_limit, the nftables per-source limits) and on the
older one (one shared password file), where the holes are open from the start.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

import pytest

from iotfleet.model.own_identities import PROBE_DEVICE, PROBE_PEER
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabFactory
from tests.integration.test_compliance import (
    Breakage,
    Broker,
    DeployedLab,
    _assert_caught,
    _break_check_repair,
)
from tests.support.check_runs import CheckRun
from tests.support.rollout import run_pyinfra

pytestmark = pytest.mark.lab

ATTACK_CHECKS = {
    "test_only_the_identitys_own_factors_get_in",
    "test_certificate_and_login_of_different_identities_refused",
    "test_oversized_connect_closed_before_authentication",
    "test_device_retained_messages_bounded",
    "test_password_attempts_rate_limited",
    "test_refused_login_is_traceable",
}
PASSWORD_PORTS = (8884, 8443)  # inventory/group_data/lab.py: the password-only listeners
# Lines of a listener block that load an authentication plugin (Mosquitto 2.0 spellings).
BREAKAGE_COMMENT = "iotfleet-test-breakage"
PLUGIN_LINE = re.compile(r"^(plugin|auth_plugin|plugin_opt_\S+|auth_opt_\S+)\s", re.MULTILINE)


@pytest.fixture(scope="module")
def deployed(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> DeployedLab:
    lab = lab_factory(suite="bookworm", brokers=2)
    deployed = DeployedLab(lab, tmp_path_factory.mktemp("adversary"))
    deployed.rollout()
    return deployed


RATE_CHECK = "test_password_attempts_rate_limited"
# The lab spares its control machine from the per-source limit (its TLS scans open hundreds of
# connections); the rate-limit attack runs on a rollout and a check that both lift that.
LIMITED = ("--data", "firewall_password_limit_exempt=[]")


def _outcomes(run: CheckRun, outcome: str) -> set[tuple[str, str]]:
    assert run.results is not None, run.explain()
    return {
        (r.host, r.test.split("::")[-1].split("[")[0])
        for r in run.results.results
        if r.outcome == outcome
    }


def test_a_rollout_passes_every_attack(deployed: DeployedLab) -> None:
    run = deployed.check("-m", "attack")
    assert run.returncode == 0, run.explain()
    passed = _outcomes(run, "passed")
    for host in (h.fqdn for h in deployed.lab.hosts):
        assert {(host, check) for check in ATTACK_CHECKS - {RATE_CHECK}} <= passed, run.explain()
        # From an exempt host the burst proves nothing: said so, never counted as a pass.
        assert (host, RATE_CHECK) in _outcomes(run, "not applicable"), run.explain()
    assert run.results is not None
    exempt = [r.message for r in run.results.results if RATE_CHECK in r.test]
    assert all("is exempt from the limit" in m for m in exempt), exempt


def test_password_burst_is_throttled_and_the_check_catches_its_absence(
    deployed: DeployedLab,
) -> None:
    host = deployed.broken
    scope = ("-k", RATE_CHECK, "--limit", host, *LIMITED)
    try:
        limited = run_pyinfra(deployed.lab.name, "deploy/brokers.py", *LIMITED)
        assert limited.returncode == 0, limited.explain()
        throttled = deployed.check(*scope)
        assert throttled.returncode == 0, throttled.explain()
        assert {(host, RATE_CHECK)} <= _outcomes(throttled, "passed"), throttled.explain()
        # The flood checks ran after every other check of their broker.
        full = deployed.check("-m", "attack", "--limit", host, *LIMITED)
        assert full.results is not None, full.explain()
        order = [r.test for r in full.results.results if r.host == host]
        floods = [i for i, t in enumerate(order) if RATE_CHECK in t]
        assert floods and min(floods) == len(order) - len(floods), order
        RATE_LIMIT.apply(deployed)
        broken = deployed.check(*scope)
        _assert_caught(broken, RATE_LIMIT, host)
    finally:
        deployed.ssh(REMOVE_INSERTED_RULE)
        deployed.rollout()


# -- breakages -----------------------------------------------------------------------------------


def _blocks(conf: str) -> dict[int, str]:
    """``{port: listener block}`` of a mosquitto.conf."""
    return {int(b.split()[0]): b for b in conf.split("\nlistener ")[1:]}


def password_files(conf: str) -> dict[int, str]:
    """``{port: password_file}`` of every listener that has one (shared or per listener)."""
    files = {}
    for port, block in _blocks(conf).items():
        match = re.search(r"^password_file\s+(\S+)", block, re.MULTILINE)
        if match:
            files[port] = match.group(1)
    return files


def break_password_listener(lab: Broker) -> None:
    """control-room's hash line in the password file of the password-only listener 8884 (with
    one shared file, as before the fix, it is there already)."""
    files = password_files(lab.ssh(f"cat {layout.CONFIG}"))
    target = files[8884]
    sources = " ".join(shlex.quote(f) for f in sorted(set(files.values())))
    line = lab.ssh(f"grep -h '^control-room:' {sources} | head -n 1").strip()
    assert line, f"control-room has no password hash in {sources}"
    lab.ssh(
        f"grep -qxF {shlex.quote(line)} {shlex.quote(target)} || "
        f"printf '%s\\n' {shlex.quote(line)} >> {shlex.quote(target)}"
    )
    lab.ssh("systemctl reload mosquitto && sleep 0.5")


def _without_plugin(port: int) -> Callable[[str], str]:
    def change(conf: str) -> str:
        head, *blocks = conf.split("\nlistener ")
        changed = [
            PLUGIN_LINE.sub("# iotfleet-test: removed ", b) if int(b.split()[0]) == port else b
            for b in blocks
        ]
        return "\nlistener ".join([head, *changed])

    return change


def _edit_if_changed(lab: Broker, change: Callable[[str], str]) -> None:
    before = lab.ssh(f"cat {layout.CONFIG}")
    after = change(before)
    if after != before:  # before the fix there is nothing to remove: the hole is open already
        lab.write(layout.CONFIG, after.encode())
        lab.restart()


def break_cn_binding(lab: Broker) -> None:
    """No authentication plugin on 8885: nothing binds the certificate's CN to the username."""
    _edit_if_changed(lab, _without_plugin(8885))


def break_retained_limit(lab: Broker) -> None:
    """No authentication plugin on 8883, where devices publish: retained anywhere again."""
    _edit_if_changed(lab, _without_plugin(8883))


def break_packet_limits(lab: Broker) -> None:
    """No max_packet_size and no memory_limit: the broker reserves what a CONNECT announces
    (on websockets listeners Mosquitto 2.0 ignores max_packet_size: memory_limit stops it)."""

    def change(conf: str) -> str:
        return re.sub(r"^(max_packet_size|memory_limit)\s.*\n", "", conf, flags=re.MULTILINE)

    _edit_if_changed(lab, change)


def break_login_log(lab: Broker) -> None:
    """The broker no longer logs at notice level, where the plugin names refused logins."""

    def change(conf: str) -> str:
        return re.sub(r"^log_type notice\n", "", conf, flags=re.MULTILINE)

    _edit_if_changed(lab, change)


def break_rate_limit(lab: Broker) -> None:
    """New connections to the password listeners accepted before any rate limit (the loaded
    table keeps its digest comment, so a rollout would not notice: the cleanup deletes it)."""
    ports = ", ".join(str(p) for p in PASSWORD_PORTS)
    lab.ssh(
        f"nft insert rule inet iotfleet input tcp dport {{ {ports} }} ct state new accept "
        f'comment "{BREAKAGE_COMMENT}"'
    )


# The rule the breakage inserted, deleted by its handle.
REMOVE_INSERTED_RULE = (
    "for handle in $(nft -a list chain inet iotfleet input | "
    f"sed -n 's/.*comment \"{BREAKAGE_COMMENT}\" # handle \\([0-9]*\\)$/\\1/p'); do "
    "nft delete rule inet iotfleet input handle $handle; done"
)


REOPENED = [
    Breakage(
        "control-room's password on the password-only listener",
        break_password_listener,
        "attack",
        {
            "test_only_the_identitys_own_factors_get_in": [
                "client control-room (auth certificate+password, has certificate and password) "
                "gets in on {host}:8884 (password) with its password alone: it may log in only "
                "on certificate+password listeners, this one is password"
            ]
        },
    ),
    Breakage(
        "no CN binding on the certificate+password listener",
        break_cn_binding,
        "attack",
        {
            "test_certificate_and_login_of_different_identities_refused": [
                f"the certificate of probe device {PROBE_PEER} with the login of probe device "
                f"{PROBE_DEVICE} gets in on {{host}}:8885 as {PROBE_DEVICE}: the certificate's "
                f"CN ({PROBE_PEER}) must be the username"
            ]
        },
    ),
    Breakage(
        "no packet size or memory limit",
        break_packet_limits,
        "attack",
        {
            "test_oversized_connect_closed_before_authentication": [
                "a CONNECT announcing 268435455 bytes (256 MiB) before authentication is not "
                "refused on {host}:8883: the connection stayed open",
                "is not refused on {host}:8443: the connection stayed open",
            ]
        },
    ),
    Breakage(
        "retained messages anywhere under a device's prefix",
        break_retained_limit,
        "attack",
        {
            "test_device_retained_messages_bounded": [
                f"probe device {PROBE_DEVICE} keeps 5 retained message(s) on its own telemetry "
                "topics via {host}:8883",
                f"only devices/{PROBE_DEVICE}/status may hold one",
            ]
        },
    ),
    Breakage(
        "refused logins not logged",
        break_login_log,
        "attack",
        {
            "test_refused_login_is_traceable": [
                "left no line in mosquitto's journal: failed logins are not traceable",
            ]
        },
    ),
]
RATE_LIMIT = Breakage(
    "no per-source rate limit on the password listeners",
    break_rate_limit,
    "attack",
    {
        RATE_CHECK: [
            "no per-source rate limit on {host}:8884: all 80 new connections opened at once "
            "from this host were answered",
            "no per-source rate limit on {host}:8443",
        ]
    },
    cleanup=REMOVE_INSERTED_RULE,
)
BREAKAGES = [*REOPENED, RATE_LIMIT]


@pytest.mark.parametrize("breakage", REOPENED, ids=[b.name for b in REOPENED])
def test_an_attack_check_catches_the_reopened_hole(
    deployed: DeployedLab, breakage: Breakage
) -> None:
    _break_check_repair(deployed, breakage)
