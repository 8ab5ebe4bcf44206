"""Operations the broker roles share, deciding from the run's host state (``host_state``):
files, directories, absent paths and systemd units. Each runs commands only for what differs,
so pyinfra's output lists exactly what changed, and a rollout that changes nothing runs no
command beyond the one read per host."""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Generator, Sequence
from io import BytesIO
from typing import Any

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, OperationError, StringCommand, operation

from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.roles.file_diff import show_change
from iotfleet.roles.host_state import HostQuery, host_state, unit_name


def shows_diff() -> bool:
    """Whether an operation should log its ``--diff`` now: when pyinfra plans before a prompt,
    or when it runs without one (-y), not a second time after the prompt."""
    return bool(state.config.DIFF) and not (state.is_executing and state.check_for_changes)


def files_query(files: Sequence[ManagedFile]) -> HostQuery:
    """What ``put_files`` reads: the files' paths."""
    return HostQuery(paths=frozenset(f.path for f in files))


@operation()
def put_files(files: Sequence[ManagedFile]) -> Generator[Any, None, None]:
    """Put files in place that differ in content, owner, group or mode, never through
    ``/tmp`` and never half-written: each is written to a new name beside its destination,
    created empty with its final owner and mode first, then renamed over the live file in one
    step. ``--diff`` shows what the file holds allows (a secret: only that it changes).

    + files: the files (``ManagedFile``: path, content, owner, group, mode, what it holds)

    **Example:**

    .. code:: python

        put_files(
            name="Health-check identity",
            files=[ManagedFile("/etc/iotfleet/health/client.key", key_pem, "root", "root", "600")],
        )
    """
    live = host_state(files_query(files))
    changed = [f for f in files if not f.matches(live.file(f.path))]
    if not changed:
        host.noop(f"{len(files)} file(s) are up to date")
        return
    directories = [
        f.path for f in changed if getattr(live.paths.get(f.path), "kind", "") == "directory"
    ]
    if directories:
        raise OperationError(f"{', '.join(directories)}: a directory where a file should go")
    if shows_diff():
        for managed in changed:  # all before the first command: pyinfra's plan stops there
            show_change(managed, live.file(managed.path))
    for managed in changed:
        directory, name = posixpath.split(managed.path)
        # A name of this run's own: two rollouts at once do not rename each other's file away.
        temporary = posixpath.join(directory, f".{name}.iotfleet-new.{secrets.token_hex(4)}")
        owner = f"{managed.owner}:{managed.group}"
        yield StringCommand(
            "install", "-o", managed.owner, "-g", managed.group, "-m", managed.mode,
            "/dev/null", temporary,
        )  # fmt: skip
        yield FileUploadCommand(BytesIO(managed.content), temporary)
        yield StringCommand(
            "chown", owner, temporary, "&&", "chmod", managed.mode, temporary,
            # -T: a link at the path is replaced, never followed into a directory.
            "&&", "mv", "-fT", temporary, managed.path,
            # What a killed run left (an hour old: no live run is that slow).
            "&&", "find", directory, "-maxdepth", "1", "-name", f"'.{name}.iotfleet-new.*'",
            "-mmin", "+60", "-delete",
        )  # fmt: skip


@operation()
def directory(path: str, owner: str, group: str, mode: str) -> Generator[Any, None, None]:
    """A directory with this owner, group and mode (created with its parents if missing).

    + path: the directory
    + owner, group: its owner and group
    + mode: octal, e.g. ``"750"``
    """
    live = host_state(HostQuery(paths=frozenset({path}))).paths.get(path)
    wanted = (owner, group, mode.lstrip("0") or "0")
    if live is None:
        yield StringCommand("install", "-d", "-o", owner, "-g", group, "-m", mode, path)
    elif live.kind != "directory":
        raise OperationError(f"{path} exists and is not a directory ({live.kind})")
    elif (live.owner, live.group, live.mode) != wanted:
        yield StringCommand("chown", f"{owner}:{group}", path, "&&", "chmod", mode, path)
    else:
        host.noop(f"directory {path} is {owner}:{group} {wanted[2]}")


@operation()
def absent(paths: Sequence[str]) -> Generator[Any, None, None]:
    """None of these paths exists (files or links; a directory here is an error).

    + paths: the paths to remove
    """
    live = host_state(HostQuery(paths=frozenset(paths)))
    present = [path for path in paths if path in live.paths]
    directories = [path for path in present if live.paths[path].kind == "directory"]
    if directories:
        raise OperationError(f"{', '.join(directories)}: a directory where a file should go")
    if not present:
        host.noop(f"{', '.join(paths)}: not there")
        return
    yield StringCommand("rm", "-f", *present)


def units_query(*services: str) -> HostQuery:
    """What ``unit`` reads: the units' states."""
    return HostQuery(units=frozenset(unit_name(service) for service in services))


@operation()
def systemd_unit(
    service: str, running: bool | None = None, enabled: bool | None = None
) -> Generator[Any, None, None]:
    """A systemd unit started or stopped, enabled or disabled (None: left as it is).

    + service: the unit (``mosquitto`` means ``mosquitto.service``)
    + running: whether it must be running now
    + enabled: whether it must start at boot
    """
    name = unit_name(service)
    live = host_state(units_query(name)).unit(name)
    if not live.read:
        raise OperationError(f"could not read the state of {name} (systemctl show)")
    commands = []
    if running is not None and running != live.running:
        commands.append(["start" if running else "stop"])
    if enabled is not None and enabled != live.enabled:
        commands.append(["enable"] if enabled else ["disable"])
    if enabled is False and live.unit_file == "enabled-runtime":
        commands.append(["disable", "--runtime"])  # enabled until reboot only: that too
    if not commands:
        host.noop(f"{name} is {'running' if live.running else 'stopped'}, {live.unit_file}")
        return
    for command in commands:
        yield StringCommand("systemctl", *command, name)
