"""Inside and outside each broker: with ssh_hardening_enabled, sshd takes keys only and
forwards nothing, as its effective configuration and a password login from outside show."""

from __future__ import annotations

import pytest

from iotfleet.check.results import NOT_APPLICABLE
from iotfleet.check.ssh_checks import offered_auth_methods, parse_sshd_t, sshd_problems
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.host, pytest.mark.ssh]


def test_sshd_hardened(broker: Param, suite: Suite) -> None:
    """sshd takes keys only and forwards nothing, with the inventory's algorithms.

    Read from ``sshd -T`` on the host, and seen from outside: a password login tried from the
    control machine is not offered a password prompt."""
    model = broker.broker.model
    if not model.ssh_hardening.enabled:
        pytest.skip(f"{NOT_APPLICABLE}: ssh_hardening_enabled is false for {broker.host}")
    effective = parse_sshd_t(suite.facts(broker.broker).sshd_effective)
    ssh = broker.broker.ssh
    offered = offered_auth_methods(ssh.hostname, ssh.port, ssh.user or "root")
    fail_on(sshd_problems(broker.host, model.ssh_hardening, effective, offered))
