"""Pieces of the fault-tolerant rollout that run without hosts: the healing install script (run
here in a shell, with its paths moved into a temporary directory), the carried pyinfra fix,
and the check that a Mosquitto is the Debian archive's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from iotfleet.check.host_facts import PackageOrigin, PackageState, parse_origin
from iotfleet.check.service_checks import origin_problems
from iotfleet.model import RawHost, build_fleet
from iotfleet.roles import dpkg_health, packages
from iotfleet.roles.pyinfra_fixes import HostConnectionLost, _connection_lost_is_host_error, _lost


def _script(tmp: Path, install: str) -> str:
    """The real script with the guard, the dpkg journal and the commands moved to ``tmp``."""
    script = packages.healing_install_script(["mosquitto"], update=False)
    install_line = [line for line in script.splitlines() if " install -y " in line][-1]
    return (
        script.replace(dpkg_health.POLICY_RC, str(tmp / "policy-rc.d"))
        .replace("/var/lib/dpkg/updates", str(tmp / "updates"))
        .replace("dpkg --audit", "true")
        .replace("dpkg --force-confold --configure -a", f"{tmp}/configure")
        # dpkg's view of the packages: the file "status" (dpkg-query's format), if any.
        .replace(packages.HALF_INSTALLED_QUERY.split(" | ")[0], f"cat {tmp}/status")
        .replace(install_line, install)
        .replace("apt-get", f"{tmp}/apt-get")
    )


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture(autouse=True)
def _configure(tmp_path: Path) -> None:
    """``dpkg --configure -a`` stand-in: counts its runs in ``configured``."""
    _stub(tmp_path / "configure", f"echo run >>{tmp_path}/configured")


def test_the_guard_refuses_starts_only_while_the_install_runs(tmp_path: Path) -> None:
    guard = tmp_path / "policy-rc.d"
    probe = f'if {guard} x start; then echo during=0; else echo "during=$?"; fi'
    result = _run(_script(tmp_path, probe))
    assert result.returncode == 0, result.stderr
    assert "during=101" in result.stdout
    assert not guard.exists()  # removed by the same command


def test_a_guard_whose_install_was_killed_allows_every_start(tmp_path: Path) -> None:
    guard = tmp_path / "policy-rc.d"
    result = _run(_script(tmp_path, "kill -KILL $$"))  # no trap runs on SIGKILL
    assert result.returncode == -9
    assert guard.exists()
    assert subprocess.run([str(guard), "mosquitto", "start"], check=False).returncode == 0
    # ... and the next install removes it as stale before placing its own.
    assert _run(_script(tmp_path, "true")).returncode == 0
    assert not guard.exists()


@pytest.mark.parametrize("signal_name", ["INT", "TERM", "HUP"])
def test_the_guard_is_removed_when_the_install_is_interrupted(
    tmp_path: Path, signal_name: str
) -> None:
    result = _run(_script(tmp_path, f"kill -{signal_name} $$; sleep 1"))
    assert result.returncode != 0
    assert not (tmp_path / "policy-rc.d").exists()


def test_a_legacy_guard_is_removed_and_a_foreign_one_kept(tmp_path: Path) -> None:
    guard = tmp_path / "policy-rc.d"
    guard.write_text(dpkg_health.LEGACY_GUARD)
    guard.chmod(0o755)
    assert _run(_script(tmp_path, "true")).returncode == 0
    assert not guard.exists()
    foreign = "#!/bin/sh\n# the image's own policy\nexit 101\n"
    guard.write_text(foreign)
    guard.chmod(0o755)
    assert _run(_script(tmp_path, "true")).returncode == 0
    assert guard.read_text() == foreign


def test_an_interrupted_dpkg_is_repaired_before_installing(tmp_path: Path) -> None:
    (tmp_path / "updates").mkdir()
    (tmp_path / "status").write_text("ii |mosquitto\n")
    assert _run(_script(tmp_path, "true")).returncode == 0
    assert not (tmp_path / "configured").exists()  # nothing pending: no repair
    (tmp_path / "updates" / "0001").write_text("Package: mosquitto\n")
    result = _run(_script(tmp_path, "true"))
    assert result.returncode == 0 and (tmp_path / "configured").exists()
    assert "repairing an interrupted dpkg" in result.stdout


def test_a_half_installed_package_is_reinstalled_after_the_repair(tmp_path: Path) -> None:
    """A power cut inside ``dpkg --unpack`` leaves the package half-installed (and reinstall-
    required): ``dpkg --configure -a`` cannot fix that, and fails while a package waits on it;
    a reinstall from the archive (lists refreshed first) does, then dpkg configures again."""
    (tmp_path / "updates").mkdir()
    (tmp_path / "updates" / "0001").write_text("Package: mosquitto\n")
    _stub(tmp_path / "apt-get", f'echo "$@" >>{tmp_path}/apt-calls')
    # Fails until the reinstall happened (a dependant left unconfigured).
    _stub(
        tmp_path / "configure",
        f"echo run >>{tmp_path}/configured; grep -q reinstall {tmp_path}/apt-calls 2>/dev/null",
    )
    (tmp_path / "status").write_text(
        "ii |nftables\niHR|mosquitto\niU |libmosquitto1\nrH |being-removed\n"
    )
    result = _run(_script(tmp_path, "true"))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "apt-calls").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["update", "mosquitto"], calls  # removals left be
    assert "--reinstall" in calls[1]
    assert "half-installed: mosquitto" in result.stdout
    assert len((tmp_path / "configured").read_text().split()) == 2
    # Nothing half-installed: the repair reinstalls nothing.
    (tmp_path / "apt-calls").unlink()
    (tmp_path / "status").write_text("ii |mosquitto\n")
    _stub(tmp_path / "configure", "true")
    assert _run(_script(tmp_path, "true")).returncode == 0
    assert not (tmp_path / "apt-calls").exists()


def test_missing_packages_honour_the_pinned_version() -> None:
    installed = {"mosquitto": ["2.0.11-1"], "mosquitto-clients": ["2.0.11-1"]}
    assert packages.missing_packages(installed, ["mosquitto", "mosquitto-clients"]) == []
    assert packages.missing_packages(installed, ["mosquitto"], "2.0.18-1") == ["mosquitto=2.0.18-1"]
    assert packages.missing_packages({}, ["nftables"]) == ["nftables"]
    # One transaction for a broker: Mosquitto pinned, nftables at any version.
    pinned = {"mosquitto": "2.0.18-1", "mosquitto-clients": "2.0.18-1"}
    assert packages.missing_packages(
        installed, ["mosquitto", "mosquitto-clients", "nftables"], versions=pinned
    ) == ["mosquitto=2.0.18-1", "mosquitto-clients=2.0.18-1", "nftables"]


def test_a_broker_needs_mosquitto_iproute2_and_nftables_from_one_install() -> None:
    def broker(**data: object):
        fleet = build_fleet([RawHost("b", ("brokers",), {"fleet_name": "x", **data})])
        return fleet.broker("b")

    names, versions = packages.broker_packages(broker())
    assert names == ["mosquitto", "mosquitto-clients", "iproute2", "nftables"] and versions == {}
    names, versions = packages.broker_packages(
        broker(firewall_enabled=False, mosquitto_package_version="2.0.18-1")
    )
    assert names == ["mosquitto", "mosquitto-clients", "iproute2"]  # the apply script's ip, ss
    assert versions == {"mosquitto": "2.0.18-1", "mosquitto-clients": "2.0.18-1"}


def test_eof_from_a_connector_is_that_hosts_connection_lost() -> None:
    class FakeHost:
        name = "broker9.example.net"

    def run_shell_command(self: object) -> None:
        raise EOFError

    wrapped = _connection_lost_is_host_error(run_shell_command)
    with pytest.raises(HostConnectionLost, match=r"connection to broker9\.example\.net was lost"):
        wrapped(FakeHost())
    assert _lost["broker9.example.net"] == "SSH connection lost"


POLICY_HAND_BUILT = """\
verify ??5??????   /usr/sbin/mosquitto
verify ??5?????? c /etc/mosquitto/mosquitto.conf
running /usr/local/sbin/mosquitto
policy mosquitto:
policy   Installed: 2.0.18-1
policy   Candidate: 2.0.18-1
policy   Version table:
policy  *** 2.0.18-1 100
policy         100 /var/lib/dpkg/status
policy      2.0.11-1.2+deb12u2 500
policy         500 http://deb.debian.org/debian bookworm/main amd64 Packages
"""


def test_a_hand_installed_mosquitto_is_named() -> None:
    origin = parse_origin(POLICY_HAND_BUILT)
    assert origin == PackageOrigin(("/usr/sbin/mosquitto",), "/usr/local/sbin/mosquitto", ())
    problems = origin_problems("b1", PackageState("install ok installed", "2.0.18-1"), origin)
    assert problems == [
        "/usr/sbin/mosquitto on b1 is not the file of the Debian package mosquitto 2.0.18-1 "
        "(dpkg --verify: its checksum differs): a hand-installed binary",
        "the broker on b1 runs /usr/local/sbin/mosquitto, not the packaged /usr/sbin/mosquitto",
        "Mosquitto 2.0.18-1 on b1 is in no configured Debian archive (apt-cache policy: only "
        "the local dpkg status): installed by hand",
    ]


def test_the_archives_mosquitto_passes() -> None:
    origin = parse_origin(
        "verify ??5?????? c /etc/mosquitto/mosquitto.conf\nrunning /usr/sbin/mosquitto\n"
        "policy   Installed: 2.0.11-1.2+deb12u2\npolicy  *** 2.0.11-1.2+deb12u2 500\n"
        "policy         500 http://10.213.0.1:8642 ./ Packages\n"
        "policy         100 /var/lib/dpkg/status\n"
    )
    assert origin.sources == ("http://10.213.0.1:8642 ./ Packages",)
    state = PackageState("install ok installed", "2.0.11-1.2+deb12u2")
    assert origin_problems("b1", state, origin) == []
