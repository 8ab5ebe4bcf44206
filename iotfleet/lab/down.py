"""``iotfleet lab down``: remove everything a lab made. Safe to run twice."""

from __future__ import annotations

import shutil
from pathlib import Path

from iotfleet.lab import naming, network, preflight
from iotfleet.lab.attach import stop_bridges
from iotfleet.lab.environment import Environment
from iotfleet.lab.errors import LabError
from iotfleet.lab.hosts import destroy_host_runtime, stop_hosts
from iotfleet.lab.hostsfile import update_hosts_file
from iotfleet.lab.leftovers import sweep_leftovers
from iotfleet.lab.procs import stop_processes
from iotfleet.lab.progress import Reporter, SilentReporter
from iotfleet.lab.state import LabPaths, LabState, exclusive_lock, lab_paths, load_state, lock_file


def down(name: str, reporter: Reporter | None = None, env: Environment | None = None) -> bool:
    """Remove everything the lab made. Safe to run twice; False if there was nothing."""
    rep = reporter or SilentReporter()
    env = env or Environment()
    name = naming.validate_lab_name(name)
    preflight.check_root(env.euid)
    paths = lab_paths(name, env.root)
    with exclusive_lock(lock_file(name, env.root), f"lab {name!r}"):
        try:
            state = load_state(paths.state_file)
        except LabError as exc:
            rep.note(f"{exc}; cleaning up by name")
            state = None
        existed = state is not None or paths.root.exists()
        teardown(name, paths, env, state, rep)
    return existed


def teardown(
    name: str,
    paths: LabPaths,
    env: Environment,
    state: LabState | None,
    rep: Reporter | None = None,
    keep_logs: bool = False,
) -> None:
    """Stop and remove what the lab made: from its state, then by name. ``keep_logs`` keeps
    the logs of a failed ``up``."""
    rep = rep or SilentReporter()
    task = rep.task(f"Stopping lab {name!r}", total=None)
    if state is not None:
        # Bridges first: each lives in a host's mount namespace and would keep it alive.
        stop_bridges(state.gateways)
        stop_processes([g.process for g in state.gateways], timeout=5)
        stop_hosts(state.hosts)
        for host in state.hosts:
            destroy_host_runtime(host, paths)
        stop_processes([state.repo_server], timeout=5)
        network.delete_link(state.bridge)
    sweep_leftovers(name, paths)
    update_hosts_file(name, [], env.hosts_lock, env.hosts_file)
    if paths.root.exists():
        if keep_logs and paths.logs_dir.is_dir():
            # A failed `up` keeps only its logs, for the error message that points at them.
            for entry in paths.root.iterdir():
                if entry != paths.logs_dir:
                    _remove(entry)
        else:
            shutil.rmtree(paths.root)
    rep.done(task, f"Lab {name!r} is down")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
