"""iotfleet used as a third party uses it: the wheel, not the checkout (issue 11).

The wheel is built from this checkout and installed into a fresh virtualenv outside it, with
the ``[check]`` extra only. From there a user's own project (an inventory and a deploy file
written here, in no way the repository's) imports the Mosquitto and firewall roles and rolls a
hardened broker out to a lab host with the real ``pyinfra`` CLI (beside a ``roles/`` folder of
its own); then ``iotfleet check`` and ``pytest --pyargs iotfleet.compliance`` from that
virtualenv run the compliance suite against it and pass.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.lab.inventory import lab_inventory_groups
from tests.integration.conftest import REPO, LabFactory, LabHost, RunningLab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

USER_DEPLOY = '''\
"""My own rollout: a hardened MQTT broker on each of my brokers, from iotfleet's roles."""

from pyinfra import host

import roles  # my own roles/ folder: iotfleet's are iotfleet.roles, no collision
from iotfleet.roles.firewall import deploy_firewall
from iotfleet.roles.mosquitto import deploy_mosquitto

assert roles.MINE
if "brokers" in host.groups:
    deploy_mosquitto()
    deploy_firewall()
'''

USER_GROUP_DATA = """\
fleet_name = "wheel-user"
fleet_devices = [{"id": "sensor-a"}, {"id": "sensor-b"}]
fleet_clients = [
    {"name": "ops", "roles": ["admin"]},
    {"name": "board", "roles": ["dashboard"], "auth": "password", "password": "generated"},
]
mosquitto_listeners = [{"port": 8883}, {"port": 8884, "auth": "password"}]
pki_passphrase_file = "ca-passphrase"
"""


@dataclass(frozen=True)
class UserProject:
    """A virtualenv with the wheel installed, and a project directory beside it."""

    venv: Path
    project: Path
    host: LabHost

    def env(self) -> dict[str, str]:
        # Nothing of the checkout: no PYTHONPATH, no lab selection; state of its own.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IOTFLEET_LAB")}
        return {**env, "IOTFLEET_HOME": str(self.project / "state")}

    def run(self, tool: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / tool), *args],
            cwd=self.project, env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip


def _pip(venv: Path, *args: str) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _user_inventory(lab: RunningLab, host: LabHost) -> str:
    """The host as a user lists it: SSH settings and firewall sources, no lab keys."""
    (data,) = [d for name, d in lab_inventory_groups(lab.name)["brokers"] if name == host.fqdn]
    mine = {k: v for k, v in data.items() if not k.startswith("lab_")}
    return f"brokers = [({host.fqdn!r}, {mine!r})]\n"


@pytest.fixture(scope="module")
def user(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> UserProject:
    lab = lab_factory(suite="bookworm", brokers=2)
    host = lab.hosts[-1]
    base = tmp_path_factory.mktemp("wheel-user")
    assert REPO not in base.parents
    wheels = base / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("iotfleet-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    _pip(venv, "install", "-q", f"{wheel}[check]")
    project = base / "my-fleet"
    (project / "group_data").mkdir(parents=True)
    (project / "group_data" / "all.py").write_text(USER_GROUP_DATA)
    (project / "inventory.py").write_text(_user_inventory(lab, host))
    (project / "my_deploy.py").write_text(USER_DEPLOY)
    (project / "roles").mkdir()
    (project / "roles" / "__init__.py").write_text("MINE = True\n")
    passphrase = project / "ca-passphrase"
    passphrase.touch(mode=0o600)
    passphrase.write_text(secrets.token_urlsafe(32))
    return UserProject(venv, project, host)


def test_the_wheel_carries_the_product_and_only_what_brokers_need(user: UserProject) -> None:
    probe = user.run(
        "python",
        "-c",
        "import importlib.metadata as m, importlib.util as u, json, iotfleet.roles.mosquitto as r\n"
        "print(json.dumps({'role': r.__file__, 'requires': m.requires('iotfleet'),\n"
        "  'plugins': [e.value for e in m.entry_points(group='pytest11')],\n"
        "  'flash': [n for n in ('esptool', 'littlefs') if u.find_spec(n)]}))",
    )
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    # Imported from the virtualenv, under the package's name; no checkout on the path.
    assert facts["role"].startswith(str(user.venv)), facts["role"]
    assert "iotfleet.compliance.plugin" in facts["plugins"]
    plain = [r for r in facts["requires"] if "extra ==" not in r]
    assert not [r for r in plain if r.startswith(("pytest", "sslyze", "esptool", "littlefs"))]
    # [check] was asked for, [flash] was not: a broker rollout needs neither esptool nor
    # littlefs.
    assert facts["flash"] == []


def test_a_users_own_deploy_rolls_out_a_broker_that_passes_the_compliance_suite(
    user: UserProject,
) -> None:
    rollout = user.run("pyinfra", "-y", "inventory.py", "my_deploy.py")
    assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
    assert "Hardened Mosquitto" in rollout.stdout + rollout.stderr

    reports = user.project / "reports"
    check = user.run("iotfleet", "check", "inventory.py", "--reports", str(reports))
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]
    run = json.loads((reports / "results.json").read_text())
    outcomes = {r["outcome"] for r in run["results"]}
    assert outcomes <= {"passed", "not applicable"}, outcomes
    checked = {g for r in run["results"] if r["outcome"] == "passed" for g in r["groups"]}
    # Inside the broker and from outside: the whole suite ran, not a corner of it.
    assert {"service", "files", "config", "pki", "firewall", "tls", "mqtt", "attack"} <= checked
    assert {r["host"] for r in run["results"]} == {user.host.fqdn}

    # The plugin on its own, as any pytest user runs it: by package name, with --limit as a
    # pyinfra group.
    files = user.run(
        "pytest", "--pyargs", "iotfleet.compliance", "--inventory", "inventory.py",
        "--limit", "brokers", "-m", "files", "-p", "no:cacheprovider", "-q",
    )  # fmt: skip
    assert files.returncode == 0, files.stdout[-3000:] + files.stderr[-2000:]
    assert "PASS compliance of inventory.py: 1 broker(s)" in files.stdout, files.stdout[-2000:]
