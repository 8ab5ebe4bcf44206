"""Inside each broker: owner and mode of every file that guards a secret or trust."""

from __future__ import annotations

import pytest

from iotfleet.check.file_checks import expected_files, file_problems
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.host, pytest.mark.files]


def test_owner_and_mode(expected_file: Param, suite: Suite) -> None:
    """Keys, certificates, password file, ACL, CRL and config are root:mosquitto, not public."""
    assert expected_file.file is not None
    broker = expected_file.broker
    paths = tuple(f.path for f in expected_files(suite.plan.fleet, broker.model))
    stats = suite.facts(broker).stats_cached(paths)
    fail_on(
        file_problems(expected_file.host, expected_file.file, stats.get(expected_file.file.path))
    )
