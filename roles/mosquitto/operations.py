"""Operations of the mosquitto role: install, and apply files with test, health and rollback."""

from __future__ import annotations

import os
import secrets
import shlex
import time
from collections.abc import Callable, Generator, Sequence
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation

from iotfleet.mosquitto import layout
from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.roles.file_diff import show_change
from iotfleet.roles.host_ops import files_query, shows_diff, units_query
from iotfleet.roles.host_state import host_state


def run_stage_name() -> str:
    """A staging directory name no other run uses: UTC time, control machine PID, random."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-{secrets.token_hex(4)}"


@operation()
def apply_files(
    files: Sequence[ManagedFile],
    listeners: str,
    candidate_config: Callable[[dict[str, str]], str],
    health_topic: str,
    health_timeout: int,
    lock_wait: int = 300,
) -> Generator[Any, None, None]:
    """Put changed files live through the on-host apply script.

    Only files whose content, owner, group or mode differ are staged, in a staging directory of
    this run's own. One apply runs at a time per broker: a second rollout waits up to
    ``lock_wait`` seconds for the first, then installs only what still differs. The script
    tests a new configuration on spare ports, restarts or reloads as the changed files ask,
    checks health and rolls back if the broker does not come up.
    """
    live = host_state(files_query(files) | units_query(layout.SERVICE))
    changed = [f for f in files if not f.matches(live.file(f.path))]
    if shows_diff():
        for managed in changed:
            show_change(managed, live.file(managed.path))
    active = live.unit(layout.SERVICE).active == "active"
    if not changed and active:
        host.noop("Mosquitto files are up to date and the broker is running")
        return
    # A staging directory of this run's own: two rollouts at once never mix their files.
    stage = f"{layout.STAGING_DIR}/{run_stage_name()}"
    yield StringCommand(
        f"install -d -o root -g {layout.GROUP} -m 0755 /var/lib/iotfleet &&"
        f" install -d -o root -g {layout.GROUP} -m 0750 {layout.STATE_DIR} &&"
        f" install -d -o root -g {layout.GROUP} -m 0750 {layout.STAGING_DIR} &&"
        f" mkdir -m 0750 {stage} && chgrp {layout.GROUP} {stage}"
    )
    manifest = []
    staged_paths = {}
    for managed in changed:
        dest = f"{stage}/{managed.staged_name}"
        yield FileUploadCommand(BytesIO(managed.content), dest)
        # Staged copies are private to their group, except files that end up readable by
        # everyone anyway (the plugin, root:root 0644), which the test broker must load.
        staged_mode = "644" if int(managed.mode, 8) & 0o004 else "640"
        yield StringCommand(
            "chown", f"root:{managed.group}", dest, "&&", "chmod", staged_mode, dest
        )
        manifest.append(
            f"{managed.action} {managed.owner} {managed.group} {managed.mode} "
            f"{managed.staged_name} {managed.path}\n"
        )
        staged_paths[managed.path] = dest
    candidate = candidate_config(staged_paths)
    for name, content in (
        ("manifest", "".join(manifest)),
        ("listeners", listeners),
        ("candidate.conf", candidate),
        ("health-topic", health_topic + "\n"),
    ):
        yield FileUploadCommand(BytesIO(content.encode()), f"{stage}/{name}")
    yield StringCommand(
        f"IOTFLEET_HOST={shlex.quote(host.name)}",
        f"IOTFLEET_HEALTH_TIMEOUT={int(health_timeout)}",
        f"IOTFLEET_APPLY_LOCK_WAIT={int(lock_wait)}",
        layout.APPLY_SCRIPT,
        stage,
    )
