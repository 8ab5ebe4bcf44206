"""sshd hardening role (opt-in): keys only, no forwarding or tunnels, modern algorithms.

In the spirit of dev-sec's ssh_hardening: one drop-in in /etc/ssh/sshd_config.d/, tested with
``sshd -t`` together with the rest of the configuration before it is installed, then sshd
is reloaded (not restarted): the rollout's own session, and every other, stays up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from io import BytesIO
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.api.util import get_template
from pyinfra.operations import files

from iotfleet.model import Broker
from iotfleet.roles.fleet_context import fleet_model
from iotfleet.roles.ssh_hardening.facts import InstalledDropinDigest
from iotfleet.roles.this_host import this_broker

TEMPLATES = Path(__file__).parent / "templates"
DROPIN = "/etc/ssh/sshd_config.d/00-iotfleet-hardening.conf"
CANDIDATE = "/etc/iotfleet/sshd-hardening.conf"  # staged here, outside sshd's Include glob
TEST_CONFIG = "/etc/iotfleet/sshd-test.conf"
# The candidate first (first value wins), then the whole configuration as sshd reads it.
TEST_CONFIG_TEXT = (
    "# managed by iotfleet: what `sshd -t` checks before the hardening drop-in is installed\n"
    f"Include {CANDIDATE}\nInclude /etc/ssh/sshd_config\n"
)
# sshd exits on a SIGHUP with a broken configuration: test it first, every time.
RELOAD = "sshd -t && if systemctl is-active -q ssh.service; then systemctl reload ssh.service; fi"
_JINJA = {"trim_blocks": True, "lstrip_blocks": True}


def render_dropin(broker: Broker) -> str:
    template = get_template(str(TEMPLATES / "00-iotfleet-hardening.conf.j2"), dict(_JINJA))
    return str(template.render(host_name=broker.name, settings=broker.ssh_hardening))


@operation()
def install_dropin(content: str) -> Generator[Any, None, None]:
    """Install the staged drop-in if sshd accepts it and it differs, then reload sshd."""
    digest = hashlib.sha256(content.encode()).hexdigest()
    if host.get_fact(InstalledDropinDigest, path=DROPIN) == digest:
        host.noop("the sshd hardening drop-in is installed and current")
        return
    yield StringCommand(
        "sshd", "-t", "-f", TEST_CONFIG,
        "&&", "install", "-m", "644", "-o", "root", "-g", "root", CANDIDATE, DROPIN,
        "&&", StringCommand(RELOAD),
    )  # fmt: skip


@operation()
def remove_dropin() -> Generator[Any, None, None]:
    """Remove the drop-in (hardening switched off) and reload sshd."""
    if host.get_fact(InstalledDropinDigest, path=DROPIN) is None:
        host.noop("no sshd hardening drop-in to remove")
        return
    yield StringCommand("rm", "-f", DROPIN, CANDIDATE, "&&", StringCommand(RELOAD))


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
    if not broker.ssh_hardening.enabled:
        remove_dropin(name="Remove the sshd hardening drop-in (ssh_hardening_enabled is false)")
        return
    files.directory(name="Create /etc/iotfleet", path="/etc/iotfleet", mode="755")
    files.put(
        name="Stage the sshd hardening drop-in",
        src=BytesIO(render_dropin(broker).encode()),
        dest=CANDIDATE,
        user="root",
        group="root",
        mode="644",
    )
    files.put(
        name="Write the configuration sshd -t tests it with",
        src=BytesIO(TEST_CONFIG_TEXT.encode()),
        dest=TEST_CONFIG,
        user="root",
        group="root",
        mode="644",
    )
    install_dropin(
        name="Test the drop-in with sshd -t, install it, reload sshd",
        content=render_dropin(broker),
    )
