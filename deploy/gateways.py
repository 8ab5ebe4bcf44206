"""Tier 3: every host of the ``flash_stations`` group flashes its ESP8266 boards.

Runs after the PKI tier (a renewed device must get its new certificate in the same rollout).
"""

from pyinfra import host

from iotfleet.model import STATIONS_GROUP
from roles.esp8266_gateway import deploy_gateways
from roles.fleet_context import reconciled_fleet

ctx = reconciled_fleet()
if STATIONS_GROUP in host.groups:
    deploy_gateways(ctx=ctx)
