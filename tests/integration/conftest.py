"""The lab for integration tests: real Debian hosts, brought up once per session per suite.

Other tests reuse it::

    def test_something(lab_factory):
        lab = lab_factory(suite="bookworm", brokers=2)
        subprocess.run([PYINFRA, "-y", str(lab.inventory), "deploy.py"], env=lab.env())

Labs are named ``itest-<suite>`` (plus a module's own tag, plus the xdist worker), grow to the
largest size any test asked for, and are taken down at the end of the session, also when tests
fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from iotfleet.fleet.paths import fleet_dir
from iotfleet.lab.state import lab_paths, load_state

if TYPE_CHECKING:
    from tests.support.sites_lab import SitesLab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
UP_TIMEOUT = 900  # a first run builds the base (about 1-2 min per suite)


@dataclass(frozen=True)
class LabHost:
    name: str
    fqdn: str
    address: str


@dataclass
class RunningLab:
    """A lab the session brought up: what a test needs to reach its hosts."""

    name: str
    suite: str
    hosts: list[LabHost]
    ssh_key: Path
    known_hosts: Path
    inventory: Path = REPO / "inventory" / "lab.py"
    gateways: list[dict[str, object]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment for `pyinfra` (or any tool) subprocesses aimed at this lab."""
        return {**os.environ, "IOTFLEET_LAB": self.name}

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    def ssh_argv(self, host: LabHost, command: str) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.ssh_key),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=5",
            f"root@{host.address}", command,
        ]  # fmt: skip

    def ssh(
        self, host: LabHost | str, command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        target = self.host(host) if isinstance(host, str) else host
        result = subprocess.run(
            self.ssh_argv(target, command),
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"{target.name}: `{command}` -> {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result


def iotfleet(*args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the real `iotfleet` CLI."""
    return subprocess.run(
        [sys.executable, "-m", "iotfleet", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
    )  # fmt: skip


def lab_up(name: str, suite: str, brokers: int, gateways: int = 0) -> RunningLab:
    result = iotfleet(
        "lab", "up", "--name", name, "--suite", suite,
        "--brokers", str(brokers), "--gateways", str(gateways),
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"iotfleet lab up --name {name} failed:\n{result.stderr}")
    return read_lab(name)


def read_lab(name: str) -> RunningLab:
    state = load_state(lab_paths(name).state_file)
    assert state is not None, f"lab {name} has no state after up"
    paths = lab_paths(name)
    return RunningLab(
        name=name,
        suite=state.suite,
        hosts=[LabHost(h.name, h.fqdn, h.address) for h in state.hosts],
        ssh_key=paths.ssh_key,
        known_hosts=paths.known_hosts,
        gateways=[json.loads(g.model_dump_json()) for g in state.gateways],
    )


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the lab integration tests need root (network namespaces, mounts, "
            "systemd-nspawn): run them as root, e.g. `sudo .venv/bin/python -m pytest -m lab`",
            pytrace=False,
        )


def _lab_prefix() -> str:
    """``itest`` unless $IOTFLEET_ITEST_PREFIX says otherwise (two test runs side by side)."""
    return os.environ.get("IOTFLEET_ITEST_PREFIX", "itest")


def _worker_suffix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"-{worker}" if worker else ""


LabFactory = Callable[..., RunningLab]


@pytest.fixture(scope="session")
def lab_factory() -> Iterator[LabFactory]:
    """``lab_factory(suite="bookworm", brokers=2, gateways=0, tag="") -> RunningLab``.

    ``tag`` names a lab of its own (``<prefix>-<suite>-<tag>``) for a module whose fleet
    differs from the shared one (e.g. a multi-site topology): the shared lab is left alone.
    """
    sizes: dict[str, tuple[int, int]] = {}
    made: list[str] = []

    def make(
        suite: str = "bookworm", brokers: int = 2, gateways: int = 0, tag: str = ""
    ) -> RunningLab:
        require_root()
        name = f"{_lab_prefix()}-{suite}{f'-{tag}' if tag else ''}{_worker_suffix()}"
        have = sizes.get(name)
        want = (max(brokers, have[0]), max(gateways, have[1])) if have else (brokers, gateways)
        if have == want:
            return read_lab(name)
        if name not in made:
            made.append(name)
            # Each session starts from a fleet that never existed: new CA, registry, secrets.
            shutil.rmtree(fleet_dir(name), ignore_errors=True)
        lab = lab_up(name, suite, *want)
        sizes[name] = want
        return lab

    try:
        yield make
    finally:
        for name in made:
            iotfleet("lab", "down", "--name", name, timeout=300)


@pytest.fixture(scope="session", params=["bookworm", "trixie"])
def sites(request: pytest.FixtureRequest, lab_factory: LabFactory) -> Iterator[SitesLab]:
    """The multi-site lab of each suite (``tests.support.sites_lab``), rolled out once per
    session and shared by the modules that use it (test_sites, test_sites_compliance): pytest
    runs every test of one suite's lab, then the other's. A test that changes the fleet
    restores it before it ends."""
    from tests.support.sites_lab import open_sites_lab

    with open_sites_lab(lab_factory, request.param) as lab_sites:
        yield lab_sites
