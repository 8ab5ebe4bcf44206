"""Rollouts that survive the faults an operator meets (issue 12, host side), on a 3-broker lab.

Each test injects one fault into real lab hosts during or around a real ``pyinfra`` rollout
(power loss between two commands, power loss inside ``dpkg --unpack``, two rollouts at once,
a broken ruleset at boot, Ctrl-C, a hand-installed Mosquitto) and shows what the operator
gets: the other brokers finish, the exit status says it, and the next run converges to the
same managed files as before the fault (owner, mode and SHA-256 compared). Recovery times are
printed (``-s``), not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.check.mqtt_probe import try_connect
from iotfleet.roles.ssh_hardening import DROPIN as SSHD_DROPIN
from iotfleet.roles.ssh_hardening import LEGACY_STAGED
from iotfleet.roles.ssh_hardening import STAGING_ROOT as SSHD_STAGING
from tests.integration.conftest import PYINFRA, LabFactory, LabHost, RunningLab
from tests.support.broker_clients import identity_of, target
from tests.support.host_faults import (
    boot_again,
    init_pid,
    managed_state,
    netns_inode,
    power_off,
    processes_in,
    shut_down,
    tcp_connects,
)
from tests.support.lab_fleet import lab_context
from tests.support.rollout import REPO, Rollout, run_iotfleet, run_pyinfra
from tests.support.waiting import wait_until

pytestmark = pytest.mark.lab

BROKERS = "deploy/brokers.py"
LISTENER_PORTS = (8883, 8884, 8885, 8443)
GUARD = "/usr/sbin/policy-rc.d"
STRAY_PORT = 9999  # a port no inventory opens: the firewall must drop it


@dataclass
class FaultLab:
    lab: RunningLab
    good: dict[str, str]  # host name -> managed files after a clean rollout

    @property
    def hosts(self) -> list[LabHost]:
        return self.lab.hosts

    def ssh(self, host: LabHost, command: str, check: bool = True) -> str:
        return self.lab.ssh(host, command, check=check, timeout=300).stdout

    def rollout(
        self, deploy: str = BROKERS, *extra: str, env: dict[str, str] | None = None
    ) -> Rollout:
        return run_pyinfra(self.lab.name, deploy, *extra, env=env)

    def converge(self) -> float:
        """A rollout that must succeed; returns its seconds."""
        started = time.monotonic()
        result = self.rollout("deploy.py")
        assert result.returncode == 0, result.explain()
        return time.monotonic() - started

    def assert_as_good(self, *hosts: LabHost) -> None:
        for host in hosts or self.hosts:
            assert managed_state(self.lab, host) == self.good[host.name], host.name

    def assert_no_change(self) -> None:
        again = self.rollout("deploy.py")
        assert again.returncode == 0 and again.changed == 0, again.explain()

    def popen(
        self, deploy: str = BROKERS, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYINFRA, "-y", "inventory/lab.py", deploy],
            cwd=REPO,
            env={**os.environ, "IOTFLEET_LAB": self.lab.name, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture(scope="module")
def faults(lab_factory: LabFactory) -> Iterator[FaultLab]:
    lab = lab_factory(suite="bookworm", brokers=3)
    first = run_pyinfra(lab.name, "deploy.py")
    assert first.returncode == 0, first.explain()
    yield FaultLab(lab, {h.name: managed_state(lab, h) for h in lab.hosts})


def _drift(faults: FaultLab, *hosts: LabHost) -> None:
    """A change every broker needs: its ACL opened to everyone (a rollout puts 0640 back)."""
    for host in hosts or faults.hosts:
        faults.ssh(host, "chmod 0644 /etc/mosquitto/acl")


def _failed_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "hosts failed, the others finished" in line]
    assert lines, f"no failed-hosts line in the summary:\n{output[-4000:]}"
    return lines[-1]


def test_broker_lost_between_two_commands_fails_only_that_broker(faults: FaultLab) -> None:
    """Power lost between two commands (paramiko's EOFError from open_session): the other
    brokers finish, the summary names the lost one, exit 1; the next run converges."""
    victim, *others = faults.hosts[1], faults.hosts[0], faults.hosts[2]
    _drift(faults)
    lost = faults.rollout(
        "tests/support/deploys/power_loss.py",
        env={"IOTFLEET_TEST_POWER_LOSS": f"{victim.fqdn}:{init_pid(faults.lab, victim)}"},
    )
    assert lost.returncode == 1, lost.explain()
    assert "internal exception" not in lost.output, lost.explain()
    assert f"the SSH connection to {victim.fqdn} was lost" in lost.output, lost.explain()
    line = _failed_line(lost.output)
    # The inventory's hosts: the brokers, and the flash station when the shared lab has boards.
    hosts = len(faults.hosts) + (1 if faults.lab.gateways else 0)
    assert f"1 of {hosts} hosts failed" in line and f"{victim.fqdn} (SSH connection lost)" in line
    faults.assert_as_good(*others)  # they got the whole rollout

    boot = boot_again(faults.lab)
    converge = faults.converge()
    faults.assert_as_good()
    faults.assert_no_change()
    print(
        f"\n[recovery] power loss between two commands: host back in {boot:.1f} s, "
        f"next rollout converged in {converge:.1f} s (total {boot + converge:.1f} s)"
    )


def test_power_loss_inside_dpkg_unpack_heals_at_the_next_run(faults: FaultLab) -> None:
    """A broker loses power while dpkg unpacks Mosquitto: after the reboot dpkg says it was
    interrupted and the guard of the killed run allows every service start; the next run
    repairs dpkg, removes that guard and a legacy one, and converges."""
    victim, other = faults.hosts[2], faults.hosts[0]
    faults.ssh(victim, "systemctl stop mosquitto; DEBIAN_FRONTEND=noninteractive "
               "apt-get remove -y -qq mosquitto mosquitto-clients >/dev/null")  # fmt: skip
    netns = netns_inode(faults.lab, victim)
    rollout = faults.popen()
    caught: list[int] = []

    def dpkg_unpacks() -> bool:
        """dpkg --unpack on the victim has journalled a change (or the rollout ended)"""
        for pid in processes_in(netns, b"--unpack"):
            try:  # the host's own view of its dpkg journal, through the process's root
                # A numbered journal entry (tmp.i alone is a write in progress, not a state
                # apt reads as interrupted).
                updates = os.listdir(f"/proc/{pid}/root/var/lib/dpkg/updates")
                if any(name.isdigit() for name in updates):
                    os.kill(pid, signal.SIGSTOP)  # frozen mid-unpack, then the power goes
                    caught.append(pid)
            except OSError:
                continue
        return bool(caught) or rollout.poll() is not None

    try:
        wait_until(dpkg_unpacks, timeout=300, poll=0.005)
        assert caught, f"dpkg --unpack never ran:\n{rollout.communicate()[0][-4000:]}"
        power_off(faults.lab, victim)
        output = rollout.communicate(timeout=600)[0]
    finally:
        if rollout.poll() is None:
            rollout.kill()
    assert rollout.returncode == 1 and victim.fqdn in _failed_line(output), output[-4000:]

    boot = boot_again(faults.lab)
    interrupted = faults.ssh(
        victim, "ls -A /var/lib/dpkg/updates | grep -vx tmp.i; dpkg --audit; true"
    )
    assert interrupted.strip(), "dpkg was not left interrupted: the fault did not happen"
    # Whatever guard the killed run left, it refuses no service start now.
    faults.ssh(victim, f"[ ! -e {GUARD} ] || {{ {GUARD} mosquitto start; [ $? -ne 101 ]; }}")
    faults.ssh(other, f"printf '#!/bin/sh\\nexit 101\\n' >{GUARD} && chmod 755 {GUARD}")

    converge = faults.converge()
    for host in (victim, other):
        faults.ssh(host, f"test ! -e {GUARD}")
    assert faults.ssh(victim, "ls -A /var/lib/dpkg/updates; dpkg --audit").strip() == ""
    assert faults.ssh(victim, "dpkg-query -W -f='${Status}' mosquitto") == "install ok installed"
    faults.assert_as_good()
    faults.assert_no_change()
    print(
        f"\n[recovery] power loss in dpkg --unpack: host back in {boot:.1f} s, "
        f"next rollout repaired dpkg and converged in {converge:.1f} s"
    )


def test_two_rollouts_at_once_serialise_on_each_broker(faults: FaultLab) -> None:
    """Both rollouts succeed (the apply lock serialises them, each stages its own files, the
    sshd drop-in too) and leave every broker as one clean rollout does; nothing is left in the
    staging areas, and what older releases staged at fixed paths is gone."""
    for host in faults.hosts:  # a change that restarts the broker (a test on spare ports)
        faults.ssh(host, "echo '# drift' >> /etc/mosquitto/mosquitto.conf")
        # ... one both rollouts stage and test with sshd -t, and the leftovers of old releases
        faults.ssh(host, f"echo '# drift' >> {SSHD_DROPIN} && touch {' '.join(LEGACY_STAGED)}")
    first, second = faults.popen(), faults.popen()
    outputs = [first.communicate(timeout=900)[0], second.communicate(timeout=900)[0]]
    for process, output in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, output[-6000:]
    faults.assert_as_good()
    for host in faults.hosts:
        assert faults.ssh(host, "ls -A /var/lib/iotfleet/mosquitto/staging") == ""
        assert faults.ssh(host, f"ls -A {SSHD_STAGING}") == ""
        assert faults.ssh(host, f"ls {' '.join(LEGACY_STAGED)} 2>&1 || true").count("No such") == 2
    faults.assert_no_change()


def test_a_rollout_that_cannot_get_the_broker_says_who_holds_it(faults: FaultLab) -> None:
    """While another apply holds a broker beyond mosquitto_apply_lock_wait, the rollout stops
    on that broker naming the holder and changes nothing there; the others finish."""
    held = faults.hosts[0]
    _drift(faults)
    faults.ssh(
        held,
        "systemd-run -q --unit=iotfleet-test-lock-holder flock "
        "/var/lib/iotfleet/mosquitto/apply.lock sleep 600 && echo 'rollout by-hand-test, pid 1' "
        "> /var/lib/iotfleet/mosquitto/apply.lock.holder",
    )
    try:
        wait_until(
            lambda: (
                faults.ssh(
                    held, "flock -n /var/lib/iotfleet/mosquitto/apply.lock true; echo $?"
                ).strip()
                == "1"
            ),
            timeout=30,
        )
        blocked = faults.rollout(BROKERS, "--data", "mosquitto_apply_lock_wait=2")
    finally:
        faults.ssh(held, "systemctl stop iotfleet-test-lock-holder", check=False)
    assert blocked.returncode == 1, blocked.explain()
    assert (
        "another rollout still holds this broker after 2s (rollout by-hand-test, pid 1); "
        "nothing was changed" in blocked.output
    ), blocked.explain()
    assert held.fqdn in _failed_line(blocked.output)
    assert faults.ssh(held, "stat -c %a /etc/mosquitto/acl").strip() == "644"  # untouched
    faults.assert_as_good(*faults.hosts[1:])
    faults.converge()
    faults.assert_as_good()


def _main_pid(faults: FaultLab, host: LabHost) -> str:
    return faults.ssh(host, "systemctl show -p MainPID --value mosquitto").strip()


def test_a_bind_address_the_host_does_not_have_fails_that_host_and_changes_nothing(
    faults: FaultLab,
) -> None:
    """Listener 8883 bound to the first broker's address (an inventory that copied one host's
    address into the group): that broker takes it; on the others the apply stops before
    anything goes live with one message naming the host, the listener and the address, and
    they keep serving their last good configuration, not restarted. The corrected inventory
    converges."""
    owner, *others = faults.hosts
    ctx = lab_context(faults.lab.name)
    listeners = [  # the lab's own (inventory/group_data/lab.py), 8883 bound to one address
        {**listener.model_dump(), **({"bind_address": owner.address} if listener.port == 8883
                                     else {})}
        for listener in ctx.fleet.broker(owner.fqdn).mosquitto.listeners
    ]  # fmt: skip
    before = {host.name: (managed_state(faults.lab, host), _main_pid(faults, host))
              for host in others}  # fmt: skip
    foreign = faults.rollout(BROKERS, "--data", f"mosquitto_listeners={json.dumps(listeners)}")
    assert foreign.returncode == 1, foreign.explain()
    failed = _failed_line(foreign.output)
    assert owner.fqdn not in failed, foreign.explain()
    for host in others:
        message = (
            f"iotfleet: {host.fqdn}: mosquitto_listeners: listener 8883 on {owner.address}: "
            f"not an address of this host (it has: "
        )
        assert sum(message in line for line in foreign.output.splitlines()) == 1, foreign.explain()
        assert "nothing was changed, the broker keeps serving its last good configuration" in (
            foreign.output
        ), foreign.explain()
        assert host.fqdn in failed
        assert (managed_state(faults.lab, host), _main_pid(faults, host)) == before[host.name]
        assert faults.ssh(host, "ls -A /var/lib/iotfleet/mosquitto/staging") == ""
        accepted = try_connect(target(ctx, host.fqdn, 8883), identity_of(ctx, "sensor-1"))
        assert accepted.accepted, f"{host.name} does not serve its last good configuration"
    # The host that has the address took it: its 8883 listens there only.
    assert faults.ssh(owner, "ss -Htln 'sport = :8883'").split()[3] == f"{owner.address}:8883"

    started = time.monotonic()
    faults.converge()
    converged = time.monotonic() - started
    faults.assert_as_good()
    faults.assert_no_change()
    print(
        f"\n[recovery] foreign bind address: the corrected rollout converged in {converged:.1f} s"
    )


def _broker_serves(faults: FaultLab, host: LabHost) -> bool:
    return any(tcp_connects(host.address, port) for port in LISTENER_PORTS)


def test_broken_ruleset_at_boot_never_leaves_mosquitto_unfiltered(faults: FaultLab) -> None:
    """Reboots with a broken firewall.nft: the last good ruleset is loaded (a stray listener
    stays unreachable); with the last good one broken too, Mosquitto does not start (nothing
    answers on its ports, while the stray listener now does). A rollout repairs both."""
    host = faults.hosts[0]
    faults.ssh(
        host,
        f"printf '[Service]\\nExecStart=/usr/bin/python3 -m http.server {STRAY_PORT}\\n"
        "[Install]\\nWantedBy=multi-user.target\\n' "
        "> /etc/systemd/system/iotfleet-test-stray.service && "
        "systemctl daemon-reload && systemctl enable -q --now iotfleet-test-stray",
    )
    try:
        faults.ssh(host, "echo 'this is not nftables' >> /etc/iotfleet/firewall.nft")
        shut_down(faults.lab, host)
        boot_again(faults.lab)
        wait_until(
            lambda: (
                "LISTEN"
                in faults.ssh(host, f"ss -Htln 'sport = :{STRAY_PORT}' | sed 's/^/LISTEN /'")
            ),
            timeout=60,
        )
        assert not tcp_connects(host.address, STRAY_PORT), "a port outside the ruleset is open"
        assert faults.ssh(host, "nft list table inet iotfleet >/dev/null && echo loaded") != ""
        assert "loading the last good ruleset" in faults.ssh(
            host, "journalctl -b -u iotfleet-firewall -o cat --no-pager"
        )
        assert _broker_serves(faults, host)  # behind the last good ruleset

        faults.ssh(host, "echo 'nor is this' >> /etc/iotfleet/firewall.last-good.nft")
        shut_down(faults.lab, host)
        boot_again(faults.lab)
        wait_until(lambda: tcp_connects(host.address, STRAY_PORT), timeout=60)  # no filter
        assert not _broker_serves(faults, host), "Mosquitto serves without its firewall"
        assert faults.ssh(host, "systemctl is-active mosquitto", check=False).strip() != "active"

        started = time.monotonic()
        faults.converge()
        repaired = time.monotonic() - started
        assert _broker_serves(faults, host)
        assert not tcp_connects(host.address, STRAY_PORT)
        print(
            f"\n[recovery] broken ruleset at boot: rollout repaired the broker in {repaired:.1f} s"
        )
    finally:
        faults.ssh(host, "systemctl disable -q --now iotfleet-test-stray; rm -f "
                   "/etc/systemd/system/iotfleet-test-stray.service; systemctl daemon-reload",
                   check=False)  # fmt: skip
    faults.assert_as_good()


def test_ctrl_c_ends_a_rollout_with_a_non_zero_exit(faults: FaultLab) -> None:
    """SIGINT during the operations (what Ctrl-C sends): exit 130, not 0; the next run
    converges."""
    _drift(faults)
    rollout = faults.popen()
    assert rollout.stdout is not None
    seen = []
    for line in rollout.stdout:
        seen.append(line)
        if "--> Starting operation:" in line:
            rollout.send_signal(signal.SIGINT)
            break
    output = "".join(seen) + rollout.communicate(timeout=300)[0]
    assert rollout.returncode == 130, output[-4000:]
    assert "Exiting upon user request!" in output
    faults.converge()
    faults.assert_as_good()


def test_check_flags_a_mosquitto_that_is_not_the_archives(faults: FaultLab, tmp_path: Path) -> None:
    """A hand-modified /usr/sbin/mosquitto (it still runs) fails the package check."""
    host = faults.hosts[0]
    scope = ("-m", "service", "--limit", host.fqdn)
    # A binary that differs from the package's (it still runs: ELF ignores trailing bytes),
    # put in place the way an installer does (the running file cannot be written to).
    faults.ssh(host, "cp -p /usr/sbin/mosquitto /root/mosquitto.archive && "
               "cp -p /usr/sbin/mosquitto /usr/sbin/mosquitto.new && "
               "printf x >> /usr/sbin/mosquitto.new && "
               "mv -f /usr/sbin/mosquitto.new /usr/sbin/mosquitto && "
               "systemctl restart mosquitto")  # fmt: skip
    try:
        broken = run_iotfleet("check", "inventory/lab.py", *scope, "--reports",
                              str(tmp_path / "broken"), lab_name=faults.lab.name)  # fmt: skip
    finally:
        faults.ssh(host, "mv -f /root/mosquitto.archive /usr/sbin/mosquitto && "
                   "systemctl restart mosquitto")  # fmt: skip
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert (
        f"/usr/sbin/mosquitto on {host.fqdn} is not the file of the Debian package mosquitto"
        in broken.stdout + broken.stderr
    ), broken.stdout + broken.stderr
    clean = run_iotfleet("check", "inventory/lab.py", *scope, "--reports",
                         str(tmp_path / "clean"), lab_name=faults.lab.name)  # fmt: skip
    assert clean.returncode == 0, clean.stdout + clean.stderr
