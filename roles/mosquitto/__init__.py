"""Mosquitto role: a TLS-only, sandboxed broker configured from the fleet inventory."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from iotfleet.context import FleetContext
from iotfleet.managed_file import ManagedFile
from iotfleet.mosquitto import layout
from roles.mosquitto.defaults import DEFAULTS
from roles.mosquitto.operations import PACKAGES, apply_files
from roles.mosquitto.private_files import private_files
from roles.mosquitto.render import health_options, health_topic_of, service_files
from roles.packages import install_debs
from roles.pki import broker_pki_files, health_identity_files

APPLY_SCRIPT_SOURCE = Path(__file__).parent / "files" / "mosquitto-apply"


@deploy("Hardened Mosquitto", data_defaults=DEFAULTS)
def deploy_mosquitto(ctx: FleetContext) -> None:
    """Install Mosquitto and make it match the fleet: TLS only, certificates, ACLs, sandbox."""
    broker = ctx.fleet.broker(host.name)
    install_debs(
        name="Install Mosquitto from Debian packages (not started yet; dpkg repaired first)",
        packages=PACKAGES,
        version=broker.mosquitto.package_version,
    )
    for path, group, mode in (
        (layout.CONFIG_DIR, layout.GROUP, "750"),
        (layout.CERT_DIR, layout.GROUP, "750"),
        ("/etc/iotfleet", "root", "755"),
        (layout.HEALTH_DIR, "root", "700"),
        (layout.TOOLS_DIR, "root", "755"),
    ):
        files.directory(
            name=f"Directory {path} (root:{group} {mode})",
            path=path,
            user="root",
            group=group,
            mode=mode,
        )
    files.put(
        name="Install the apply script (test, restart, health check, rollback)",
        src=str(APPLY_SCRIPT_SOURCE),
        dest=layout.APPLY_SCRIPT,
        user="root",
        group="root",
        mode="755",
    )
    health_files = [
        *health_identity_files(ctx.pki, broker.name),
        ManagedFile(layout.HEALTH_OPTIONS, health_options(ctx, broker), "root", "root", "600"),
    ]
    private_files(
        name="Health-check identity (certificate, key, password; never shown)",
        files=health_files,
    )
    # Nothing is read back from the host: password salts are derived (never `cat` a password
    # file into fact output, which pyinfra -vvv prints).
    config, managed_files = service_files(ctx, broker)
    apply_files(
        name="Apply the broker configuration (tested on spare ports, health-checked, rollback)",
        files=[*broker_pki_files(ctx.pki, broker.name), *managed_files],
        listeners=config.listeners_table(),
        candidate_config=lambda staged: config.text(staged, candidate=True),
        health_topic=health_topic_of(broker),
        health_timeout=broker.mosquitto.health_timeout,
        lock_wait=broker.mosquitto.apply_lock_wait,
    )
    files.file(
        name=f"No shared password file ({layout.LEGACY_PASSWORD_FILE}): one per listener",
        path=layout.LEGACY_PASSWORD_FILE,
        present=False,
    )
    systemd.service(
        name="Mosquitto enabled at boot and running",
        service=layout.SERVICE,
        running=True,
        enabled=True,
    )
