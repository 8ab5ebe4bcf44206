"""pyinfra's configuration for this project (pyinfra runs ./config.py before the inventory).

iotfleet refuses a bad inventory, listing every mistake, before pyinfra connects to any host.
"""

from iotfleet.roles.preflight import check_inventory_before_connecting

check_inventory_before_connecting()
