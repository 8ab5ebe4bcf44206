"""The pyinfra patch offered upstream (docs/upstream/) and the fix iotfleet carries meanwhile,
shown with the real pyinfra CLI against a real SSH server on loopback that drops the connection
as the command arrives (paramiko's EOFError, pyinfra-dev/pyinfra#1220), next to ``@local``."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyinfra
import pytest

from tests.support.dropping_ssh_server import DroppingSSHServer

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "docs" / "upstream" / "pyinfra-ssh-connection-lost.patch"
PATCHED_VERSION = "3.10.0"  # the release the patch was made against
PYINFRA_CLI = str(Path(sys.executable).with_name("pyinfra"))
DEPLOY = str(REPO / "tests" / "support" / "deploys" / "one_command.py")
INSTALLED = Path(pyinfra.__file__).parent
LOST = "127.0.0.1"


def _needs_the_patched_release() -> None:
    installed = importlib.metadata.version("pyinfra")
    if installed != PATCHED_VERSION:
        pytest.skip(
            f"{PATCH.name} is made against pyinfra {PATCHED_VERSION}, {installed} is "
            "installed: make it again against this release (docs/upstream/README.md)"
        )


@pytest.fixture
def lost_host_inventory(tmp_path: Path) -> Iterator[Path]:
    """An inventory of two hosts: one whose connection drops at its first command, and
    ``@local``."""
    with DroppingSSHServer(tmp_path) as server:
        data = {
            "ssh_port": server.port,
            "ssh_user": "root",
            "ssh_key": str(server.client_key),
            "ssh_known_hosts_file": str(server.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }
        inventory = tmp_path / "inventory.py"
        inventory.write_text(f"hosts = [({LOST!r}, {data!r}), '@local']\n")
        yield inventory


def _rollout(inventory: Path, env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run(
        [PYINFRA_CLI, "-y", str(inventory), DEPLOY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=inventory.parent,  # pyinfra writes pyinfra-debug.log there on an internal error
        env={**os.environ, **env},
    )
    return result.returncode, result.stdout + result.stderr


def _patched_pyinfra(directory: Path) -> Path:
    """A copy of the installed pyinfra with the patch applied, for PYTHONPATH."""
    shutil.copytree(INSTALLED, directory / "pyinfra")
    subprocess.run(["git", "apply", "-p2", str(PATCH)], cwd=directory, check=True)
    return directory


def test_the_patch_is_against_the_releases_own_file_and_applies() -> None:
    _needs_the_patched_release()
    record = importlib.metadata.distribution("pyinfra").read_text("RECORD") or ""
    wheel_hash = next(
        line.split(",")[1] for line in record.splitlines()
        if line.startswith("pyinfra/connectors/ssh.py,")
    )  # fmt: skip
    digest = hashlib.sha256((INSTALLED / "connectors" / "ssh.py").read_bytes()).digest()
    assert wheel_hash == "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    checked = subprocess.run(
        ["git", "apply", "--check", "-p2", str(PATCH)],
        cwd=INSTALLED.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_unpatched_pyinfra_ends_the_whole_run_on_a_lost_host(lost_host_inventory: Path) -> None:
    """The bug, as #1220 reports it: what the patch and the carried fix are for."""
    _needs_the_patched_release()
    status, output = _rollout(lost_host_inventory, {})
    assert status != 0
    assert "An internal exception occurred" in output and "EOFError" in output, output[-3000:]


def test_the_patched_pyinfra_fails_the_lost_host_only(
    lost_host_inventory: Path, tmp_path: Path
) -> None:
    _needs_the_patched_release()
    overlay = _patched_pyinfra(tmp_path / "patched")
    status, output = _rollout(lost_host_inventory, {"PYTHONPATH": str(overlay)})
    assert status == 1, output[-3000:]
    assert "internal exception" not in output, output[-3000:]
    assert f"SSH connection to {LOST} lost (the host went away or sshd stopped)" in output
    assert "[@local]    Success" in output, output[-3000:]


def test_the_carried_fix_fails_the_lost_host_only(lost_host_inventory: Path) -> None:
    status, output = _rollout(lost_host_inventory, {"IOTFLEET_TEST_CARRIED_FIX": "1"})
    assert status == 1, output[-3000:]
    assert "internal exception" not in output, output[-3000:]
    assert "[@local]    Success" in output, output[-3000:]
    assert f"1 of 2 hosts failed, the others finished: {LOST} (SSH connection lost)" in output
