"""Tier 1, on the control machine: commit the fleet's PKI plan.

Loading the inventory plans, in memory: issue missing identities, renew those inside the
renewal window, revoke devices that left the inventory or are marked revoked, re-sign the CRL,
generate missing secrets. This tier adds the operation that writes that plan (pyinfra lists it
as ``PKI of fleet NAME: ...``; ``--dry`` shows it and writes nothing). No host is changed.
"""

from iotfleet.roles.fleet_context import reconciled_fleet

reconciled_fleet()
