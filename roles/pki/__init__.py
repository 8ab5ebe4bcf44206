"""PKI role: which certificates, keys and CRL a broker holds, with the owner and mode it needs.

Broker keys go only to their own broker. Device keys never leave the control machine except
inside that device's flash image (``roles.esp8266_gateway``). The files are installed by the
mosquitto role's apply step, so a changed certificate or CRL is tested and rolled back like
any other configuration change (Mosquitto re-reads CRLs only on restart).
"""

from __future__ import annotations

from pyinfra.api import deploy

from iotfleet.fleet.context import FleetContext
from iotfleet.model.own_identities import bridge_identity_name, health_identity_name
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.managed_file import ManagedFile
from iotfleet.pki import PkiStore
from iotfleet.roles.fleet_context import fleet_context
from iotfleet.roles.this_host import this_broker


def broker_pki_files(pki: PkiStore, broker_name: str) -> list[ManagedFile]:
    """CA chain, server certificate and key, and CRL for one broker (restart on change)."""
    return [
        layout.CA_CHAIN_FILE.with_content(pki.ca_chain_pem()),
        layout.SERVER_CERT_FILE.with_content(pki.certificate_pem(broker_name)),
        layout.SERVER_KEY_FILE.with_content(pki.private_key_pem(broker_name)),
        crl_file(pki),
    ]


def bridge_pki_files(pki: PkiStore, edge_name: str) -> list[ManagedFile]:
    """The bridge identity's certificate and key of edge broker ``edge_name`` (its own
    identity, never the broker's server key: revoking it cuts the bridge, not the broker)."""
    name = bridge_identity_name(edge_name)
    return [
        layout.BRIDGE_CERT_FILE.with_content(pki.certificate_pem(name)),
        layout.BRIDGE_KEY_FILE.with_content(pki.private_key_pem(name)),
    ]


def crl_file(pki: PkiStore) -> ManagedFile:
    """The intermediate's CRL as Mosquitto's ``crlfile`` (it re-reads it on restart)."""
    return layout.CRL_FILE.with_content(pki.crl_pem())


@deploy("Fresh CRL")
def deploy_crl(ctx: FleetContext | None = None) -> None:
    """
    Put the PKI's current CRL live on this broker and nothing else (``deploy/crl.py``, what
    ``iotfleet pki refresh-crl`` pushes). The same file, owner and mode as the full rollout,
    through the broker's apply script: the broker restarts with it, is health-checked, and is
    rolled back if it does not come up. A CRL that is already live changes nothing.

    + ctx: the fleet of this run; default: the current pyinfra inventory, validated (the PKI
      is read, not reconciled)

    **Example:**

    .. code:: python

        from iotfleet.roles.pki import deploy_crl

        deploy_crl()
    """
    from iotfleet.roles.mosquitto.operations import apply_files
    from iotfleet.roles.mosquitto.render import health_topic_of, service_files

    ctx = ctx or fleet_context()
    broker = this_broker(ctx.fleet)
    config, _ = service_files(ctx, broker)
    apply_files(
        name="Install the re-signed CRL (broker restarted, health-checked, rollback)",
        files=[crl_file(ctx.pki)],
        listeners=config.listeners_table(),
        candidate_config=lambda staged: config.text(staged, candidate=True),
        health_topic=health_topic_of(broker),
        health_timeout=broker.mosquitto.health_timeout,
        lock_wait=broker.mosquitto.apply_lock_wait,
    )


def health_identity_files(pki: PkiStore, broker_name: str) -> list[ManagedFile]:
    """The broker's own health-check client identity, readable by root only."""
    name = health_identity_name(broker_name)
    return [
        layout.HEALTH_CERT_FILE.with_content(pki.certificate_pem(name)),
        layout.HEALTH_KEY_FILE.with_content(pki.private_key_pem(name)),
    ]
