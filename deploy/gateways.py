"""Tier 3: every host of the ``flash_stations`` group flashes its ESP8266 boards, and renewed
device certificates are delivered over MQTT to the gateways in the field; gateways due for a new
key are asked for a CSR, which is signed and delivered the same way (re-key over the air).

Runs after the PKI tier (a renewed device must get its new certificate in the same rollout) and
the broker tier (whose ACL lets iotfleet's delivery identity publish it).
"""

from pyinfra import host

from iotfleet.model import STATIONS_GROUP
from iotfleet.roles.esp8266_gateway import deploy_gateways
from iotfleet.roles.esp8266_gateway.delivery import deliver_renewed_certificates, rekey_devices
from iotfleet.roles.fleet_context import reconciled_fleet

ctx = reconciled_fleet()
if STATIONS_GROUP in host.groups:
    deploy_gateways(ctx=ctx)
rekey_devices(ctx)
deliver_renewed_certificates(ctx)
