"""A class as a pyinfra inventory: `IOTFLEET_CLASS=NAME pyinfra inventory/classroom.py deploy.py`.

Reads the class made by `iotfleet classroom new` (default: the only class, or $IOTFLEET_CLASS)
and the lab it runs on; see the README's teacher walk-through.
"""

from __future__ import annotations

import sys

from iotfleet.classroom.inventory import classroom_inventory_groups
from iotfleet.classroom.store import ClassError
from iotfleet.lab.errors import LabError

try:
    _groups = classroom_inventory_groups()
except (ClassError, LabError) as _exc:
    sys.exit(f"iotfleet: {_exc}")

brokers = _groups["brokers"]
if "flash_stations" in _groups:
    flash_stations = _groups["flash_stations"]
