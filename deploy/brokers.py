"""Tier 2: every host of the ``brokers`` group gets a hardened, TLS-only Mosquitto."""

from pyinfra import host

from iotfleet.model import BROKERS_GROUP
from iotfleet.roles import firewall, mosquitto, ssh_hardening
from iotfleet.roles.firewall import deploy_firewall
from iotfleet.roles.fleet_context import reconciled_fleet
from iotfleet.roles.host_state import expect
from iotfleet.roles.mosquitto import deploy_mosquitto
from iotfleet.roles.ssh_hardening import deploy_ssh_hardening

ctx = reconciled_fleet()
if BROKERS_GROUP in host.groups:
    broker = ctx.fleet.broker(host.name)
    # What the three roles read of the host, read in one command before they decide.
    expect(firewall.host_query(broker) | mosquitto.host_query(broker) | ssh_hardening.host_query())
    # The firewall first: Mosquitto's unit requires the firewall's (it never serves unfiltered).
    deploy_firewall(broker=broker)
    deploy_mosquitto(ctx=ctx)
    deploy_ssh_hardening(broker=broker)
