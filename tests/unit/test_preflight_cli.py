"""The real pyinfra CLI, run from the project: inventory mistakes are refused before pyinfra
contacts any host, and Ctrl-C while it connects ends with a non-zero exit.

The "host" is a local socket that accepts and never answers (an sshd that hangs): it counts
the connections pyinfra makes, and keeps pyinfra in its connect stage for as long as needed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.roles.pyinfra_fixes import INTERRUPTED_EXIT
from tests.support.rollout import REPO
from tests.support.waiting import returns_within, wait_until

PYINFRA = Path(sys.executable).with_name("pyinfra")


class SilentSshd:
    """Accepts TCP connections on loopback and never sends an SSH banner."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def sshd() -> Iterator[SilentSshd]:
    server = SilentSshd()
    yield server
    server.close()


def _inventory(tmp_path: Path, port: int, groups: str = "", data: str = "") -> Path:
    """A one-broker fleet whose broker is ``127.0.0.1:port``, plus extra groups or data."""
    inventory = tmp_path / "inventory" / "hung.py"
    (inventory.parent / "group_data").mkdir(parents=True)
    inventory.write_text(
        "brokers = [\n"
        f'    ("mqtt1.hung.test", {{"ssh_hostname": "127.0.0.1", "ssh_port": {port},'
        ' "ssh_user": "root"}),\n'
        "]\n" + groups
    )
    (inventory.parent / "group_data" / "all.py").write_text(
        'fleet_name = "hung"\nfleet_devices = [{"id": "gw-1"}]\n' + data
    )
    return inventory


def _pyinfra(tmp_path: Path, inventory: Path, *command: str) -> subprocess.Popen[str]:
    env = {**os.environ, "IOTFLEET_HOME": str(tmp_path / "state"), "PYINFRA_PROGRESS": "off"}
    return subprocess.Popen(
        [str(PYINFRA), "-y", str(inventory), *(command or ("deploy.py",))],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_mistakes_are_refused_before_any_host_is_contacted(
    tmp_path: Path, sshd: SilentSshd
) -> None:
    inventory = _inventory(
        tmp_path, sshd.port, groups='broker = ["x"]\n', data="mosquito_persistence = False\n"
    )
    run = _pyinfra(tmp_path, inventory)
    output, _ = returns_within(run.communicate, timeout=120)
    assert run.returncode == 1, output
    assert "mosquito_persistence" in output and "group broker" in output, output
    assert "Traceback" not in output, output
    # Where in iotfleet's code the refusal was raised tells the user nothing.
    assert "pyinfra error: iotfleet: invalid inventory" in output, output
    assert ".py line " not in output, output
    assert sshd.accepted == [], "pyinfra connected to a host before refusing the inventory"
    assert not (tmp_path / "state").exists()


def test_ctrl_c_while_connecting_exits_non_zero(tmp_path: Path, sshd: SilentSshd) -> None:
    run = _pyinfra(tmp_path, _inventory(tmp_path, sshd.port))
    try:
        wait_until(lambda: bool(sshd.accepted) or run.poll() is not None, timeout=120)
        assert run.poll() is None, run.communicate()[0]
        run.send_signal(signal.SIGINT)
        output, _ = returns_within(run.communicate, timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == INTERRUPTED_EXIT, output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "command",
    [("exec", "--", "python3", "x.py"), ("fact", "files.File", "path=/etc/x.py")],
    ids=["exec", "fact"],
)
def test_commands_that_run_no_deploy_file_are_not_refused_as_a_fleet(
    tmp_path: Path, sshd: SilentSshd, command: tuple[str, ...]
) -> None:
    """pyinfra's ad-hoc commands on the same inventory are not fleet rollouts: the inventory
    mistake does not stop them, pyinfra goes on to connect (to the silent sshd)."""
    inventory = _inventory(tmp_path, sshd.port, groups='broker = ["x"]\n')
    run = _pyinfra(tmp_path, inventory, *command)
    try:
        wait_until(lambda: bool(sshd.accepted) or run.poll() is not None, timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        output, _ = run.communicate()
    assert "group broker" not in output, output
    assert sshd.accepted, output
