"""sshd hardening role (opt-in): keys only, no forwarding or tunnels, modern algorithms.

In the spirit of dev-sec's ssh_hardening: one drop-in in /etc/ssh/sshd_config.d/, tested with
``sshd -t`` together with the rest of the configuration before it is installed, then sshd
is reloaded (not restarted): the rollout's own session, and every other, stays up. Each run
stages the candidate in a directory of its own, so two rollouts at once never share a file.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.api.util import get_template

from iotfleet.model import Broker
from iotfleet.roles.fleet_context import fleet_model
from iotfleet.roles.host_state import HostQuery, expect, host_state
from iotfleet.roles.this_host import this_broker

TEMPLATES = Path(__file__).parent / "templates"
DROPIN = "/etc/ssh/sshd_config.d/00-iotfleet-hardening.conf"
# Each run stages the candidate in a directory of its own here (root only, outside sshd's
# Include glob), made and removed by the command that tests and installs it: two rollouts at
# once never share a file. A run killed outright leaves its directory; the next run removes
# directories older than a day.
STAGING_ROOT = "/var/lib/iotfleet/sshd-staging"
STALE_STAGING_MINUTES = 24 * 60
# Where releases before per-run staging staged the candidate and the test configuration.
LEGACY_STAGED = ("/etc/iotfleet/sshd-hardening.conf", "/etc/iotfleet/sshd-test.conf")
# sshd exits on a SIGHUP with a broken configuration: test it first, every time.
RELOAD = "sshd -t && if systemctl is-active -q ssh.service; then systemctl reload ssh.service; fi"
_JINJA = {"trim_blocks": True, "lstrip_blocks": True}


def render_dropin(broker: Broker) -> str:
    template = get_template(str(TEMPLATES / "00-iotfleet-hardening.conf.j2"), dict(_JINJA))
    return str(template.render(host_name=broker.name, settings=broker.ssh_hardening))


def install_script(content: str) -> str:
    """The remote script: stage ``content`` in a directory of this run's own, test it with
    ``sshd -t`` ahead of the whole configuration (the first value of a keyword wins), install
    it atomically, reload sshd; the directory goes whatever happens (a trap)."""
    root, target = shlex.quote(STAGING_ROOT), shlex.quote(DROPIN)
    return (
        "\n".join(
            [
                "set -e",
                f"mkdir -p {shlex.quote(str(Path(STAGING_ROOT).parent))}",
                f"install -d -o root -g root -m 0700 {root}",
                f"find {root} -mindepth 1 -maxdepth 1 -mmin +{STALE_STAGING_MINUTES} "
                "-exec rm -rf {} + 2>/dev/null || true",
                f"stage=$(mktemp -d {root}/run.XXXXXXXX)",
                f"new={target}.iotfleet.$$",
                """trap 'rm -rf "$stage"; rm -f "$new"' EXIT""",
                "trap 'exit 129' HUP",
                "trap 'exit 130' INT",
                "trap 'exit 143' TERM",
                f'printf "%s" {shlex.quote(content)} >"$stage/hardening.conf"',
                'printf "Include %s\\nInclude /etc/ssh/sshd_config\\n" "$stage/hardening.conf"'
                ' >"$stage/test.conf"',
                'sshd -t -f "$stage/test.conf"',
                'install -m 644 -o root -g root "$stage/hardening.conf" "$new"',
                f'mv -fT "$new" {target}',  # -T: a link there is replaced, not followed
                RELOAD,
            ]
        )
        + "\n"
    )


def host_query() -> HostQuery:
    """Everything the role reads of a host (one read per run: ``expect``)."""
    return HostQuery(paths=frozenset({DROPIN, *LEGACY_STAGED}))


def _installed() -> tuple[bool, str | None]:
    """(something is at the drop-in's path, the SHA-256 of it if it is a regular file)."""
    live = host_state(HostQuery(paths=frozenset({DROPIN}))).paths.get(DROPIN)
    return live is not None, live.sha256 if live else None


@operation()
def install_dropin(content: str) -> Generator[Any, None, None]:
    """Test the drop-in with ``sshd -t`` and install it if it differs, then reload sshd.

    + content: the drop-in's text

    The candidate is staged in a directory of this run's own, removed by the same command.
    """
    digest = hashlib.sha256(content.encode()).hexdigest()
    if _installed()[1] == digest:
        host.noop("the sshd hardening drop-in is installed and current")
        return
    yield StringCommand("sh", "-c", shlex.quote(install_script(content)))


@operation()
def remove_dropin() -> Generator[Any, None, None]:
    """Remove the drop-in (hardening switched off) and reload sshd."""
    if not _installed()[0]:  # a link there is removed too (sshd would read through it)
        host.noop("no sshd hardening drop-in to remove")
        return
    yield StringCommand("rm", "-f", DROPIN, "&&", StringCommand(RELOAD))


@operation()
def remove_legacy_staging() -> Generator[Any, None, None]:
    """Remove the candidate and the test configuration that older releases staged at fixed
    paths (safe while another rollout removes them too)."""
    live = host_state(HostQuery(paths=frozenset(LEGACY_STAGED)))
    present = [path for path in LEGACY_STAGED if path in live.paths]
    if not present:
        host.noop("nothing staged at fixed paths")
        return
    yield StringCommand("rm", "-f", *present)


@deploy("sshd hardening")
def deploy_ssh_hardening(broker: Broker | None = None) -> None:
    """
    Keys only, no forwarding or tunnels, modern key exchange, ciphers and MACs: one sshd
    drop-in, tested with ``sshd -t`` before it is installed, then sshd is reloaded (sessions
    survive). Off, and undone, unless ``ssh_hardening_enabled``.

    + broker: the broker whose sshd is hardened; default: the current host in this run's
      validated fleet

    Keys: the host's ``ssh_hardening_*`` (``iotfleet keys ssh_hardening_``).

    **Example:**

    .. code:: python

        from iotfleet.roles.ssh_hardening import deploy_ssh_hardening

        deploy_ssh_hardening()
    """
    broker = broker or this_broker(fleet_model())
    expect(host_query())
    remove_legacy_staging(name="No sshd files staged at fixed paths (older releases)")
    if not broker.ssh_hardening.enabled:
        remove_dropin(name="Remove the sshd hardening drop-in (ssh_hardening_enabled is false)")
        return
    install_dropin(
        name="Test the drop-in with sshd -t (staged per run), install it, reload sshd",
        content=render_dropin(broker),
    )
