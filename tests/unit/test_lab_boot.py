"""Boot command line and kernel limits."""

from __future__ import annotations

import os
from pathlib import Path

from iotfleet.lab.boot import SshAccess, inotify_instances_needed, nspawn_argv
from iotfleet.lab.procs import is_alive, start_time
from iotfleet.lab.state import ProcessRef


def test_nspawn_boots_systemd_in_the_host_namespace_with_net_admin() -> None:
    argv = nspawn_argv(Path("/r"), "iof-abcd-broker1", "broker1", "iof-abcd-broker1")
    assert argv[0] == "systemd-nspawn"
    for flag in (
        "--boot",
        "--register=no",
        "--keep-unit",
        "--capability=CAP_NET_ADMIN",
        "--hostname=broker1",
        "--network-namespace-path=/run/netns/iof-abcd-broker1",
    ):
        assert flag in argv


def test_ssh_is_strict_and_batch() -> None:
    argv = SshAccess(Path("/k"), Path("/kh")).argv("10.0.0.5", "true")
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert "UserKnownHostsFile=/kh" in argv and argv[-2:] == ["root@10.0.0.5", "true"]


def test_inotify_limit_only_grows() -> None:
    assert inotify_instances_needed(20, current=128) == 128 + 24 * 20
    assert inotify_instances_needed(1, current=8192) is None


def test_process_identity_includes_start_time() -> None:
    me = ProcessRef(pid=os.getpid(), start_time=start_time(os.getpid()) or 0)
    assert is_alive(me)
    assert not is_alive(ProcessRef(pid=os.getpid(), start_time=me.start_time + 1))
    assert not is_alive(None)
