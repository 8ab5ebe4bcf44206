"""Inside each broker: the nftables input filter is loaded and opens only what it should."""

from __future__ import annotations

import pytest

from iotfleet.check.host_checks import firewall_problems
from iotfleet.check.results import NOT_APPLICABLE
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.host, pytest.mark.firewall]


def test_firewall_loaded(broker: Param, suite: Suite) -> None:
    """The iotfleet nftables table drops by default and opens SSH and the listeners only."""
    if not broker.broker.model.firewall.enabled:
        pytest.skip(f"{NOT_APPLICABLE}: firewall_enabled is false for {broker.host}")
    facts = suite.facts(broker.broker)
    fail_on(
        firewall_problems(
            broker.host, broker.broker.model, facts.firewall_table, facts.firewall_unit_enabled
        )
    )
