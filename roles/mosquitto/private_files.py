"""An operation for files that hold secrets: keys and passwords a broker keeps for itself."""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Generator, Sequence
from io import BytesIO
from typing import Any

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, StringCommand, operation

from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.roles.mosquitto.facts import ManagedFileStates


@operation()
def private_files(files: Sequence[ManagedFile]) -> Generator[Any, None, None]:
    """Put files holding secrets in place without ever showing or exposing their content.

    Unlike ``files.put``, nothing of the content reaches pyinfra's output (``--diff`` says only
    that a secret file changes), and no copy passes through ``/tmp``: each changed file is
    written to a new name beside its destination, created empty with its final owner and mode
    first, then renamed over the live file in one step.

    + files: the files (``ManagedFile``: path, content, owner, group, mode)

    **Example:**

    .. code:: python

        private_files(
            name="Health-check identity",
            files=[ManagedFile("/etc/iotfleet/health/client.key", key_pem, "root", "root", "600")],
        )
    """
    states = host.get_fact(ManagedFileStates, paths=tuple(f.path for f in files))
    changed = [f for f in files if not f.matches(states.get(f.path))]
    if not changed:
        host.noop(f"{len(files)} secret file(s) are up to date")
        return
    for managed in changed:
        if state.config.DIFF:
            host.log(f"Will write {managed.path} (it holds a secret: content not shown)")
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
            "&&", "mv", "-f", temporary, managed.path,
            # What a killed run left (an hour old: no live run is that slow).
            "&&", "find", directory, "-maxdepth", "1", "-name", f"'.{name}.iotfleet-new.*'",
            "-mmin", "+60", "-delete",
        )  # fmt: skip
