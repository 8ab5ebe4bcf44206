"""Print an inventory's hosts (name, groups, merged data) as JSON: ``python -m
iotfleet.check.inventory_dump INVENTORY``.

The compliance suite reads inventories through this child process because loading one imports
``pyinfra_cli``, which monkey-patches the whole process with gevent; the suite's probes
(threads, sockets, sslyze) must run in a normal process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m iotfleet.check.inventory_dump INVENTORY", file=sys.stderr)
        return 2
    from iotfleet.fleet.inventory import load_inventory, raw_hosts

    try:
        inventory = load_inventory(Path(argv[0]))
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    hosts = [
        {"name": host.name, "groups": list(host.groups), "data": dict(host.data)}
        for host in raw_hosts(inventory)
    ]
    json.dump(hosts, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
