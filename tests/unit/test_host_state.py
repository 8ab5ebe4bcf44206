"""The one read per host (``host_state``): what it reads, and that it stays as fresh as
pyinfra's own facts. Runs the real command in a real shell and real pyinfra operations on the
local host (``@local``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host, ctx_state
from pyinfra.operations import python

from iotfleet.mosquitto.managed_file import FileState, ManagedFile
from iotfleet.roles import host_ops, host_state, packages
from iotfleet.roles.host_ops import absent, directory, put_files
from iotfleet.roles.host_state import HostQuery, parse_output, query_command


def _read(query: HostQuery, **env: str) -> host_state.HostSnapshot:
    result = subprocess.run(
        ["sh", "-c", query_command(query)],
        capture_output=True, text=True, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr  # never fails, whatever is missing
    return parse_output(result.stdout.splitlines())


def test_one_command_reads_files_directories_links_packages_and_the_ssh_session(
    tmp_path: Path,
) -> None:
    config = tmp_path / "with space.conf"
    config.write_bytes(b"listener 8883\n")
    config.chmod(0o640)
    (tmp_path / "dir").mkdir(mode=0o750)
    (tmp_path / "link").symlink_to(config)
    os.mkfifo(tmp_path / "fifo")
    paths = [config, tmp_path / "dir", tmp_path / "link", tmp_path / "fifo", tmp_path / "gone"]
    query = HostQuery(
        paths=frozenset(str(p) for p in paths),
        packages=frozenset({"dpkg", "iotfleet-no-such-package"}),
        ssh_connection=True,
    )
    snapshot = _read(query, SSH_CONNECTION="10.0.0.9 50022 10.0.0.1 22")

    digest = hashlib.sha256(b"listener 8883\n").hexdigest()
    assert snapshot.file(str(config)) == FileState("root", "root", "640", digest)
    assert snapshot.paths[str(tmp_path / "dir")].kind == "directory"
    assert snapshot.paths[str(tmp_path / "dir")].mode == "750"
    assert snapshot.file(str(tmp_path / "dir")) is None  # not a regular file
    assert snapshot.paths[str(tmp_path / "link")].kind == "link"  # never followed
    assert snapshot.paths[str(tmp_path / "fifo")].kind == "other"
    assert str(tmp_path / "gone") not in snapshot.paths
    assert list(snapshot.packages) == ["dpkg"]
    assert snapshot.ssh_connection == ("10.0.0.9", 22)
    assert repr(query) == "HostQuery(5 paths, 0 units, 2 packages, ssh)"  # short in -vv


def test_a_managed_file_matches_only_its_exact_state(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_bytes(b"user a\n")
    path.chmod(0o640)
    managed = ManagedFile(str(path), b"user a\n", "root", "root", "640")
    assert managed.matches(_read(HostQuery(paths=frozenset({str(path)}))).file(str(path)))
    path.chmod(0o644)
    assert not managed.matches(_read(HostQuery(paths=frozenset({str(path)}))).file(str(path)))


class LocalRun:
    """Real pyinfra operations on ``@local``, counting the host-state reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, confirm: bool = False) -> None:
        self.reads: list[HostQuery] = []
        real = host_state.query_command

        def counted(query: HostQuery) -> str:
            self.reads.append(query)
            return real(query)

        monkeypatch.setattr(host_state, "query_command", counted)
        inventory = Inventory((["@local"], {}))  # type: ignore[no-untyped-call]
        # confirm: like a run that asks before it executes (pyinfra without -y).
        config = Config()  # type: ignore[no-untyped-call]
        self.state = State(inventory, config, check_for_changes=confirm)
        connect_all(self.state)
        self.host = inventory.get_host("@local")

    def expect(self, query: HostQuery) -> None:
        with ctx_state.use(self.state), ctx_host.use(self.host):
            host_state.expect(query)

    def op(self, operation: Any, **kwargs: Any) -> Any:
        return add_op(self.state, operation, **kwargs)[self.host]

    def run(self) -> None:
        run_ops(self.state)


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRun]:
    yield LocalRun(monkeypatch)


def test_nothing_to_change_is_one_read_for_every_operation(tmp_path: Path, local: LocalRun) -> None:
    (tmp_path / "d").mkdir(mode=0o750)
    (tmp_path / "d").chmod(0o750)
    (tmp_path / "f").write_bytes(b"x\n")
    (tmp_path / "f").chmod(0o600)
    d, f, gone = str(tmp_path / "d"), str(tmp_path / "f"), str(tmp_path / "gone")
    local.expect(HostQuery(paths=frozenset({d, f, gone})))
    ops = [
        local.op(directory, path=d, owner="root", group="root", mode="750"),
        local.op(put_files, files=[ManagedFile(f, b"x\n", "root", "root", "600")]),
        local.op(absent, paths=[gone]),
    ]
    local.run()
    assert [op.did_change() for op in ops] == [False, False, False]
    assert len(local.reads) == 1


def test_after_an_operation_ran_a_command_the_next_one_reads_again(
    tmp_path: Path, local: LocalRun
) -> None:
    target = str(tmp_path / "made")
    local.expect(HostQuery(paths=frozenset({target})))
    first = local.op(directory, path=target, owner="root", group="root", mode="750")
    # The same directory again: only a fresh read sees that the first operation made it.
    second = local.op(directory, path=target, owner="root", group="root", mode="750")
    local.run()
    assert (first.did_change(), second.did_change()) == (True, False)
    assert len(local.reads) == 2
    assert oct((tmp_path / "made").stat().st_mode & 0o777) == "0o750"


def test_files_are_written_whole_with_their_mode_and_drift_is_put_back(
    tmp_path: Path, local: LocalRun
) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old\n")
    target.chmod(0o644)
    op = local.op(put_files, files=[ManagedFile(str(target), b"new\n", "root", "root", "600")])
    local.run()
    assert op.did_change()
    assert target.read_bytes() == b"new\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary left beside it


def test_a_run_that_asks_first_reads_again_when_it_executes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between planning and executing, the user was asked: the host may have changed."""
    run = LocalRun(monkeypatch, confirm=True)
    target = tmp_path / "d"
    op = run.op(directory, path=str(target), owner="root", group="root", mode="755")
    assert len(run.reads) == 1  # the plan
    target.mkdir(mode=0o755)  # made by someone else during the prompt
    target.chmod(0o755)
    run.run()
    assert len(run.reads) == 2
    assert not op.did_change()


def test_a_directory_where_a_file_should_go_is_an_error_not_replaced(
    tmp_path: Path, local: LocalRun
) -> None:
    (tmp_path / "conf").mkdir()
    local.op(put_files, files=[ManagedFile(str(tmp_path / "conf"), b"x", "root", "root", "600")])
    with pytest.raises(Exception, match="a directory where a file should go"):
        local.run()
    assert (tmp_path / "conf").is_dir()


@pytest.mark.parametrize("confirm", [False, True], ids=["-y", "asks first"])
def test_two_installs_of_the_same_packages_install_once_with_or_without_a_prompt(
    monkeypatch: pytest.MonkeyPatch, confirm: bool
) -> None:
    """The firewall's install covers the Mosquitto role's: the second is a no-op. Planned and
    then run again (pyinfra without -y), the first must still install."""
    monkeypatch.setattr(
        packages, "healing_install_script", lambda specs, update=True: "echo " + " ".join(specs)
    )
    run = LocalRun(monkeypatch, confirm=confirm)
    wanted = ["iotfleet-no-such-a", "iotfleet-no-such-b"]
    first = run.op(packages.install_debs, packages=wanted)
    second = run.op(packages.install_debs, packages=wanted)
    run.run()
    assert (first.did_change(), second.did_change()) == (True, False)


def test_a_link_at_a_file_path_is_replaced_never_followed_into_a_directory(
    tmp_path: Path, local: LocalRun
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "client.key"
    link.symlink_to(elsewhere)
    op = local.op(put_files, files=[ManagedFile(str(link), b"key\n", "root", "root", "600")])
    local.run()
    assert op.did_change()
    assert not link.is_symlink() and link.read_bytes() == b"key\n"
    assert list(elsewhere.iterdir()) == []  # nothing (a secret) moved into the link's target


def test_diff_shows_every_changed_file_while_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyinfra's plan stops an operation at its first command: every diff comes before."""
    shown: list[str] = []
    monkeypatch.setattr(host_ops, "show_change", lambda managed, live: shown.append(managed.path))
    run = LocalRun(monkeypatch, confirm=True)
    run.state.config.DIFF = True
    paths = [str(tmp_path / name) for name in ("a", "b", "c")]
    run.op(put_files, files=[ManagedFile(p, b"x", "root", "root", "600") for p in paths])
    assert shown == paths  # at the plan, before the prompt
    run.run()
    assert shown == paths  # not again after it


@pytest.mark.parametrize("marked", [True, False], ids=["local only", "may touch the host"])
def test_a_control_machine_only_callback_keeps_the_read_fresh(
    tmp_path: Path, local: LocalRun, marked: bool
) -> None:
    """The PKI commit runs before every host's operations: it must not cost a read per
    operation after it; any other callback might have changed the host."""

    def commit() -> None:
        pass

    d, gone = str(tmp_path), str(tmp_path / "gone")
    local.expect(HostQuery(paths=frozenset({d, gone})))
    local.op(directory, path=d, owner="root", group="root", mode=oct(tmp_path.stat().st_mode)[-3:])
    local.op(python.call, function=host_state.local_only(commit) if marked else commit)
    local.op(absent, paths=[gone])
    local.run()
    assert len(local.reads) == (1 if marked else 2)
