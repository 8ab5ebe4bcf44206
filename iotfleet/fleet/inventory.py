"""Read a pyinfra inventory (file or live object) into the validated fleet model.

Used by the CLI (``iotfleet check``, ``iotfleet pki``) and, through ``roles.fleet_context``, by
the deploys, so both see exactly the same fleet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from iotfleet.model import Fleet, RawHost, build_fleet

if TYPE_CHECKING:
    from pyinfra.api.inventory import Inventory


def raw_hosts(inventory: Inventory) -> list[RawHost]:
    """The inventory's hosts with their groups and merged data, as the model wants them."""
    return [
        RawHost(name=host.name, groups=tuple(host.groups), data=host.data.dict())  # type: ignore[no-untyped-call]
        for host in inventory
    ]


# Host data set on the command line (``--data KEY=VALUE``, as with ``pyinfra --data``), passed
# as JSON to every process that loads the inventory for the same run.
OVERRIDE_DATA_ENV = "IOTFLEET_INVENTORY_DATA"


def override_data() -> dict[str, object]:
    """The ``--data`` overrides of this run (none unless ``OVERRIDE_DATA_ENV`` is set)."""
    raw = os.environ.get(OVERRIDE_DATA_ENV)
    return dict(json.loads(raw)) if raw else {}


def parse_data_option(option: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, value)``; the value is JSON when it parses (``[]``, ``5``,
    ``false``), else the string, as ``pyinfra --data`` reads it."""
    key, sep, value = option.partition("=")
    if not sep or not key:
        raise ValueError(f"--data {option!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def load_inventory(path: str | Path) -> Inventory:
    """Load an inventory file the way the ``pyinfra`` CLI does (with ``group_data/`` and the
    run's ``--data`` overrides)."""
    from pyinfra.api.state import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    inventory_path = Path(path)
    if not inventory_path.is_file():
        raise FileNotFoundError(f"inventory file {inventory_path} does not exist")
    # Inventory and group_data files are executed under a pyinfra state, as in the CLI.
    with ctx_state.use(State()):
        inventory: Inventory = make_inventory(
            str(inventory_path), override_data=override_data(), cwd=str(Path.cwd())
        )
    return inventory


def load_fleet(path: str | Path) -> tuple[Fleet, Inventory]:
    """Load and validate an inventory file; raises ``InventoryError`` with every problem."""
    inventory = load_inventory(path)
    return build_fleet(raw_hosts(inventory)), inventory
