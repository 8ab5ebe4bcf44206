"""Operations of the mosquitto role: install, and apply files with test, health and rollback."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Generator, Sequence
from io import BytesIO
from typing import Any

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.facts.deb import DebPackages

from iotfleet.mosquitto import layout
from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.roles.mosquitto.diff import show_change
from iotfleet.roles.mosquitto.facts import ManagedFileStates, ServiceActive

PACKAGES = ("mosquitto", "mosquitto-clients")
# Keeps the package from starting a stock broker (plain, localhost:1883) before the hardened
# configuration is in place: Debian's maintainer scripts honour policy-rc.d.
POLICY_RC = "/usr/sbin/policy-rc.d"


@operation()
def install_packages(version: str | None = None) -> Generator[Any, None, None]:
    """Install Mosquitto and its clients from the host's Debian archive, without starting it."""
    installed = host.get_fact(DebPackages)
    wanted = [f"{name}={version}" if version else name for name in PACKAGES]
    missing = [
        spec
        for name, spec in zip(PACKAGES, wanted, strict=True)
        if name not in installed or (version is not None and version not in installed[name])
    ]
    if not missing:
        host.noop("mosquitto and mosquitto-clients are installed")
        return
    guard = shlex.quote(POLICY_RC)
    yield StringCommand(
        "sh",
        "-c",
        " ".join(
            [
                f"made=0; if [ ! -e {guard} ]; then printf '#!/bin/sh\\nexit 101\\n' >{guard};",
                f"chmod 755 {guard}; made=1; fi;",
                "DEBIAN_FRONTEND=noninteractive apt-get update -qq &&",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends",
                "-o Dpkg::Options::=--force-confold",
                *(shlex.quote(spec) for spec in wanted),
                "; status=$?;",
                f'[ "$made" = 1 ] && rm -f {guard}; exit $status',
            ]
        ),
    )


@operation()
def apply_files(
    files: Sequence[ManagedFile],
    listeners: str,
    candidate_config: Callable[[dict[str, str]], str],
    health_topic: str,
    health_timeout: int,
) -> Generator[Any, None, None]:
    """Put changed files live through the on-host apply script.

    Only files whose content, owner, group or mode differ are staged. The script tests a new
    configuration on spare ports, restarts or reloads as the changed files ask, checks health
    and rolls back if the broker does not come up.
    """
    states = host.get_fact(ManagedFileStates, paths=tuple(f.path for f in files))
    changed = [f for f in files if not f.matches(states.get(f.path))]
    if state.config.DIFF:
        for managed in changed:
            show_change(managed, states.get(managed.path))
    active = host.get_fact(ServiceActive, service=layout.SERVICE)
    if not changed and active:
        host.noop("Mosquitto files are up to date and the broker is running")
        return
    stage = layout.STAGING_DIR
    yield StringCommand(
        f"install -d -o root -g {layout.GROUP} -m 0755 /var/lib/iotfleet &&"
        f" install -d -o root -g {layout.GROUP} -m 0750 {layout.STATE_DIR} &&"
        f" rm -rf {stage} && install -d -o root -g {layout.GROUP} -m 0750 {stage}"
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
    yield StringCommand(f"IOTFLEET_HEALTH_TIMEOUT={int(health_timeout)}", layout.APPLY_SCRIPT)
