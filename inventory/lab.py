"""The local lab as a pyinfra inventory: `pyinfra inventory/lab.py deploy.py`.

Reads the state of the lab named by $IOTFLEET_LAB (default ``lab``); see docs/lab.md.
"""

from __future__ import annotations

import sys

from iotfleet.lab.errors import LabError
from iotfleet.lab.inventory import lab_inventory_groups

try:
    _groups = lab_inventory_groups()
except LabError as _exc:
    # A clear line instead of a traceback from inside pyinfra's inventory loader.
    sys.exit(f"iotfleet: {_exc}")

brokers = _groups["brokers"]
if "flash_stations" in _groups:
    flash_stations = _groups["flash_stations"]
