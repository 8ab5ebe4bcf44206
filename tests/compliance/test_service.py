"""Inside each broker: Mosquitto installed, running as its own user, inside its sandbox."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iotfleet.check.host_facts import parse_exposure
from iotfleet.check.service_checks import (
    origin_problems,
    package_problems,
    sandbox_problems,
    service_problems,
    user_problems,
)
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.host, pytest.mark.service]


def test_mosquitto_installed(
    broker: Param, suite: Suite, record_fact: Callable[[str, str], None]
) -> None:
    """Mosquitto is installed from its package (version recorded, pin honoured), and it is the
    Debian archive's: the binary is the package's and runs, the version is in an archive."""
    facts = suite.facts(broker.broker)
    state = facts.package
    if state.version:
        record_fact("mosquitto_version", state.version)
    problems = package_problems(broker.host, broker.broker.model, state)
    if state.version:
        problems += origin_problems(broker.host, state, facts.package_origin)
    fail_on(problems)


def test_service_enabled_and_running(broker: Param, suite: Suite) -> None:
    """mosquitto.service is enabled at boot and running."""
    facts = suite.facts(broker.broker)
    fail_on(service_problems(broker.host, facts.service_enabled, facts.service_active))


def test_broker_runs_as_mosquitto(broker: Param, suite: Suite) -> None:
    """The broker starts and runs as the unprivileged user mosquitto."""
    facts = suite.facts(broker.broker)
    fail_on(
        user_problems(
            broker.host, facts.unit.get("User", ""), facts.main_process_user, facts.processes
        )
    )


def test_systemd_sandbox_in_effect(broker: Param, suite: Suite) -> None:
    """The systemd sandbox is loaded and systemd-analyze security scores it <= 1.5."""
    facts = suite.facts(broker.broker)
    exposure = parse_exposure(facts.exposure_report)
    fail_on(sandbox_problems(broker.host, broker.broker.model, facts.unit, exposure))
