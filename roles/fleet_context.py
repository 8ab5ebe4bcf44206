"""The fleet of the running ``pyinfra`` command, validated once for all hosts and roles.

pyinfra executes deploy files once per host; the fleet and its secrets are resolved on the
first call and reused, so every host sees the same, once-validated fleet, and a bad inventory
stops the run before any operation is executed on any host.
"""

from __future__ import annotations

import sys
from functools import cache

from pyinfra import inventory as current_inventory

from iotfleet.context import FleetContext
from iotfleet.fleet_pki import reconcile_fleet
from iotfleet.inventory import raw_hosts
from iotfleet.model import InventoryError, build_fleet
from iotfleet.pki import PkiError
from iotfleet.secrets import SecretError


@cache
def fleet_context() -> FleetContext:
    """The validated fleet of this pyinfra run; exits with the list of problems if invalid."""
    try:
        return FleetContext.for_fleet(build_fleet(raw_hosts(current_inventory)))
    except (InventoryError, SecretError) as exc:
        raise SystemExit(f"iotfleet: {exc}") from None


@cache
def reconciled_fleet() -> FleetContext:
    """The fleet with its PKI reconciled on the control machine (once per pyinfra run).

    Runs while pyinfra prepares operations, before any host is changed: brokers need the
    certificates and CRL it produces. It issues what is missing, renews what expires soon,
    revokes what left the inventory and refreshes the CRL.
    """
    ctx = fleet_context()
    try:
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    except PkiError as exc:
        raise SystemExit(f"iotfleet: PKI: {exc}") from None
    print(f"iotfleet: PKI of fleet {ctx.fleet.name}: {report.summary()}", file=sys.stderr)
    return ctx
