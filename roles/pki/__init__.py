"""PKI role: which certificates, keys and CRL a broker holds, with the owner and mode it needs.

Broker keys go only to their own broker. Device keys never leave the control machine except
inside that device's flash image (``roles.esp8266_gateway``). The files are installed by the
mosquitto role's apply step, so a changed certificate or CRL is tested and rolled back like
any other configuration change (Mosquitto re-reads CRLs only on restart).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from iotfleet.context import FleetContext
from iotfleet.health import health_identity_name
from iotfleet.managed_file import ManagedFile
from iotfleet.mosquitto import layout
from iotfleet.pki import PkiStore


def broker_pki_files(pki: PkiStore, broker_name: str) -> list[ManagedFile]:
    """CA chain, server certificate and key, and CRL for one broker (restart on change)."""

    def broker_file(path: str, content: bytes) -> ManagedFile:
        return ManagedFile(path, content, layout.OWNER, layout.GROUP, "640", "restart")

    return [
        broker_file(layout.CA_CHAIN, pki.ca_chain_pem()),
        broker_file(layout.SERVER_CERT, pki.certificate_pem(broker_name)),
        broker_file(layout.SERVER_KEY, pki.private_key_pem(broker_name)),
        crl_file(pki),
    ]


def crl_file(pki: PkiStore) -> ManagedFile:
    """The intermediate's CRL as Mosquitto's ``crlfile`` (it re-reads it on restart)."""
    return ManagedFile(layout.CRL, pki.crl_pem(), layout.OWNER, layout.GROUP, "640", "restart")


@deploy("Fresh CRL")
def deploy_crl(ctx: FleetContext) -> None:
    """Put the PKI's current CRL live on this broker and nothing else (``deploy/crl.py``).

    The same file, owner and mode as the full rollout, through the broker's apply script: the
    broker restarts with it, is health-checked, and is rolled back if it does not come up. A
    CRL that is already live changes nothing.
    """
    from roles.mosquitto.operations import apply_files
    from roles.mosquitto.render import health_topic_of, service_files

    broker = ctx.fleet.broker(host.name)
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
        ManagedFile(layout.HEALTH_CERT, pki.certificate_pem(name), "root", "root", "600"),
        ManagedFile(layout.HEALTH_KEY, pki.private_key_pem(name), "root", "root", "600"),
    ]
