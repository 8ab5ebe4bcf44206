"""Tier 1, on the control machine: reconcile the fleet's PKI with the inventory.

Issues missing identities, renews those inside the renewal window, revokes devices that left
the inventory or are marked revoked, and re-signs the CRL. No host is changed by this tier.
"""

from iotfleet.roles.fleet_context import reconciled_fleet

reconciled_fleet()
