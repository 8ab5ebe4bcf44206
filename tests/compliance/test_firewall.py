"""Inside each broker: the nftables input filter is loaded and opens only what it should."""

from __future__ import annotations

import pytest

from iotfleet.check.firewall_rules import firewall_problems
from iotfleet.check.results import NOT_APPLICABLE
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.host, pytest.mark.firewall]


def test_firewall_loaded(broker: Param, suite: Suite) -> None:
    """The firewall drops by default and accepts nothing wider than the inventory.

    Every input-hook chain of the whole ruleset (nft -j) drops by default and accepts only
    replies, loopback, ICMP, SSH (from firewall_ssh_sources) and the listeners; password
    listeners limit new connections per source."""
    if not broker.broker.model.firewall.enabled:
        pytest.skip(f"{NOT_APPLICABLE}: firewall_enabled is false for {broker.host}")
    facts = suite.facts(broker.broker)
    fail_on(
        firewall_problems(
            broker.host, broker.broker.model, facts.firewall_ruleset, facts.firewall_unit_enabled
        )
    )
