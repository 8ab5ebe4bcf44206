"""The pyinfra host a role runs on, as the run's validated fleet knows it."""

from __future__ import annotations

from pyinfra import host

from iotfleet.model import BROKERS_GROUP, Broker, Fleet
from iotfleet.roles.refusal import RolloutRefusedError


def this_broker(fleet: Fleet) -> Broker:
    """The fleet's broker of the current host; stops the run if the host is not a broker."""
    try:
        return fleet.broker(host.name)
    except KeyError:
        raise RolloutRefusedError(
            f"iotfleet: host {host.name} is not in the inventory's {BROKERS_GROUP!r} group: "
            "iotfleet's broker roles run on brokers only"
        ) from None
