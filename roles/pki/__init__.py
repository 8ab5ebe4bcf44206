"""PKI role: which certificates, keys and CRL a broker holds, with the owner and mode it needs.

Broker keys go only to their own broker. Device keys never leave the control machine except
inside that device's flash image (``roles.esp8266_gateway``). The files are installed by the
mosquitto role's apply step, so a changed certificate or CRL is tested and rolled back like
any other configuration change (Mosquitto re-reads CRLs only on restart).
"""

from __future__ import annotations

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
        broker_file(layout.CRL, pki.crl_pem()),
    ]


def health_identity_files(pki: PkiStore, broker_name: str) -> list[ManagedFile]:
    """The broker's own health-check client identity, readable by root only."""
    name = health_identity_name(broker_name)
    return [
        ManagedFile(layout.HEALTH_CERT, pki.certificate_pem(name), "root", "root", "600"),
        ManagedFile(layout.HEALTH_KEY, pki.private_key_pem(name), "root", "root", "600"),
    ]
