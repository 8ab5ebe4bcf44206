"""Push only the CRL to every broker: ``pyinfra INVENTORY deploy/crl.py``.

What `iotfleet pki refresh-crl` runs after re-signing the CRL (the CRL timer, daily). No
reconcile, no other file: the PKI's current ``crl.pem`` goes live through each broker's apply
script (restart, health check, rollback), and a broker that has it already is left alone.
"""

from pyinfra import host

from iotfleet.model import BROKERS_GROUP
from iotfleet.roles.fleet_context import fleet_context
from iotfleet.roles.pki import deploy_crl

if BROKERS_GROUP in host.groups:
    deploy_crl(ctx=fleet_context())
