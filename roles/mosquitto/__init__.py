"""Mosquitto role: a TLS-only, sandboxed broker configured from the fleet inventory."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from iotfleet.fleet.context import FleetContext
from iotfleet.model import Broker
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.bridge import edge_bridge
from iotfleet.roles.firewall import deploy_firewall, firewall_rolled_out
from iotfleet.roles.fleet_context import reconciled_fleet
from iotfleet.roles.host_ops import absent, directory, put_files, systemd_unit, units_query
from iotfleet.roles.host_state import HostQuery, expect
from iotfleet.roles.mosquitto.operations import apply_files
from iotfleet.roles.mosquitto.render import (
    apply_script,
    health_options,
    health_topic_of,
    service_files,
)
from iotfleet.roles.packages import broker_packages, install_debs, packages_query
from iotfleet.roles.pki import bridge_pki_files, broker_pki_files, health_identity_files
from iotfleet.roles.this_host import this_broker


def host_query(broker: Broker) -> HostQuery:
    """Everything the role reads of ``broker``'s host (one read per run: ``expect``)."""
    ports = [listener.port for listener in broker.mosquitto.listeners]
    paths = {spec.path for spec in layout.broker_files(ports, bridge=True)}
    paths.add(layout.LEGACY_PASSWORD_FILE)
    names, _ = broker_packages(broker)
    return HostQuery(paths=frozenset(paths)) | units_query(layout.SERVICE) | packages_query(names)


@deploy("Hardened Mosquitto")
def deploy_mosquitto(ctx: FleetContext | None = None) -> None:
    """
    Install Mosquitto and make it match the fleet: TLS only, client certificates, one password
    file per password listener, an ACL whose device rules are patterns (only the broker's
    identities log in: the plugin's identities file), CRL, iotfleet's plugin, limits, a
    systemd sandbox; on an edge broker of a multi-site fleet (``fleet_sites``), its bridge to
    the site's cores with its own bridge identity. A new configuration is tested on spare
    ports (without the bridge), health-checked and rolled back if the broker does not come up.

    + ctx: the fleet of this run; default: the current pyinfra inventory, validated once, with
      its PKI reconciled on the control machine (CA, broker and device certificates, CRL)

    Runs on hosts of the inventory's ``brokers`` group. Fleet-wide keys (``fleet_*``,
    ``pki_*``) and the host's ``mosquitto_*`` keys are read through the validated fleet;
    ``iotfleet keys mosquitto_`` lists them with their defaults (``iotfleet.model.settings``).
    The host's firewall is this role's dependency: ``deploy_firewall`` runs first unless the
    deploy file already called it; sshd is a separate role (``deploy_ssh_hardening``).

    **Example:**

    .. code:: python

        # my_deploy.py: pyinfra my_inventory.py my_deploy.py
        from iotfleet.roles.firewall import deploy_firewall
        from iotfleet.roles.mosquitto import deploy_mosquitto

        deploy_mosquitto()
        deploy_firewall()
    """
    ctx = ctx or reconciled_fleet()
    broker = this_broker(ctx.fleet)
    expect(host_query(broker))
    if not firewall_rolled_out(host.name):
        # A role dependency (Ansible's meta dependencies): Mosquitto's unit requires the
        # firewall's, so the broker never serves unfiltered; the firewall must exist first
        # (or, with firewall_enabled false, an earlier one is stopped, not left stale).
        deploy_firewall(broker=broker)
    # The same transaction as the firewall's (already queued, when it ran first).
    names, versions = broker_packages(broker)
    install_debs(
        name="Install Mosquitto from Debian packages (not started yet; dpkg repaired first)",
        packages=names,
        versions=versions,
    )
    for spec in layout.DIRECTORIES:
        directory(
            name=f"Directory {spec.path} ({spec.owner}:{spec.group} {spec.mode.lstrip('0')})",
            path=spec.path,
            owner=spec.owner,
            group=spec.group,
            mode=spec.mode.lstrip("0"),
        )
    put_files(
        name="Install the apply script (test, restart, health check, rollback)",
        files=[layout.APPLY_SCRIPT_FILE.with_content(apply_script().encode())],
    )
    health_files = [
        *health_identity_files(ctx.pki, broker.name),
        layout.HEALTH_OPTIONS_FILE.with_content(health_options(ctx, broker)),
    ]
    put_files(
        name="Health-check identity (certificate, key, password; never shown)",
        files=health_files,
    )
    # Nothing is read back from the host: password salts are derived (never `cat` a password
    # file into fact output, which pyinfra -vvv prints).
    config, managed_files = service_files(ctx, broker)
    # An edge broker of a multi-site fleet logs in at its cores with its bridge identity.
    bridges = edge_bridge(ctx.fleet, broker.name) is not None
    pki_files = [
        *broker_pki_files(ctx.pki, broker.name),
        *(bridge_pki_files(ctx.pki, broker.name) if bridges else ()),
    ]
    apply_files(
        name="Apply the broker configuration (tested on spare ports, health-checked, rollback)",
        files=[*pki_files, *managed_files],
        listeners=config.listeners_table(),
        candidate_config=lambda staged: config.text(staged, candidate=True),
        health_topic=health_topic_of(broker),
        health_timeout=broker.mosquitto.health_timeout,
        lock_wait=broker.mosquitto.apply_lock_wait,
    )
    absent(
        name=f"No shared password file ({layout.LEGACY_PASSWORD_FILE}): one per listener",
        paths=[layout.LEGACY_PASSWORD_FILE],
    )
    if ctx.fleet.sites and not bridges:
        # A core, or an edge whose site's bridge was revoked: no bridge identity kept (the
        # configuration that used it is no longer live).
        for bridge_file in (layout.BRIDGE_CERT_FILE, layout.BRIDGE_KEY_FILE):
            absent(
                name=f"No {bridge_file.what} ({bridge_file.path}): this broker has no bridge",
                paths=[bridge_file.path],
            )
    systemd_unit(
        name="Mosquitto enabled at boot and running",
        service=layout.SERVICE,
        running=True,
        enabled=True,
    )
