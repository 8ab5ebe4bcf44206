"""Tier 2: every host of the ``brokers`` group gets a hardened, TLS-only Mosquitto."""

from pyinfra import host

from iotfleet.model import BROKERS_GROUP
from iotfleet.roles.firewall import deploy_firewall
from iotfleet.roles.fleet_context import reconciled_fleet
from iotfleet.roles.mosquitto import deploy_mosquitto
from iotfleet.roles.ssh_hardening import deploy_ssh_hardening

ctx = reconciled_fleet()
if BROKERS_GROUP in host.groups:
    # The firewall first: Mosquitto's unit requires the firewall's (it never serves unfiltered).
    deploy_firewall(broker=ctx.fleet.broker(host.name))
    deploy_mosquitto(ctx=ctx)
    deploy_ssh_hardening(broker=ctx.fleet.broker(host.name))
