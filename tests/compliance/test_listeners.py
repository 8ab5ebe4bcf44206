"""Inside each broker: it listens exactly where the inventory says, never in clear text."""

from __future__ import annotations

import pytest

from iotfleet.check.listener_checks import (
    configured_listener_problems,
    plain_listener_problems,
    socket_problems,
)
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.host, pytest.mark.listeners]


def test_listens_exactly_where_the_inventory_says(broker: Param, suite: Suite) -> None:
    """The broker's open sockets are the inventory's listeners, no more, no less."""
    facts = suite.facts(broker.broker)
    fail_on(socket_problems(broker.host, broker.broker.model, facts.sockets))


def test_configured_listeners_match_the_inventory(broker: Param, suite: Suite) -> None:
    """The running configuration declares the inventory's listeners (port, address, protocol)."""
    facts = suite.facts(broker.broker)
    fail_on(configured_listener_problems(broker.host, broker.broker.model, facts.config))


def test_no_plain_mqtt_off_loopback(broker: Param, suite: Suite) -> None:
    """No MQTT without TLS on an address other hosts can reach."""
    facts = suite.facts(broker.broker)
    fail_on(plain_listener_problems(broker.host, facts.config, facts.sockets))
