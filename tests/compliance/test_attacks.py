"""From outside, as an adversary: every identity's factors on every listener, an oversized
CONNECT before authentication, a retained flood from a device, a burst of password attempts."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from iotfleet.check import raw_attacks
from iotfleet.check.login_trace import journal_problems
from iotfleet.check.plan import ListenerTarget
from iotfleet.check.results import NOT_APPLICABLE
from iotfleet.check.suite import Param, Suite, fail_on

# Not ``mqtt``: ``-m mqtt`` keeps its meaning, and the floods run only when asked or in a
# whole run.
pytestmark = [pytest.mark.outside, pytest.mark.attack]


def _target(param: Param) -> ListenerTarget:
    assert param.listener is not None
    return param.listener


@pytest.mark.listener_kind("reachable")
def test_only_the_identitys_own_factors_get_in(listener: Param, suite: Suite) -> None:
    """Each identity kind gets in only where and with what the inventory says (factor matrix)."""
    fail_on(suite.prober(listener.host).factor_matrix(_target(listener)))


@pytest.mark.listener_kind("two-factor")
def test_certificate_and_login_of_different_identities_refused(
    listener: Param, suite: Suite
) -> None:
    """One identity's certificate with another identity's login is refused."""
    fail_on(suite.prober(listener.host).mixed_identities(_target(listener)))


@pytest.mark.listener_kind("tls")
def test_oversized_connect_closed_before_authentication(listener: Param, suite: Suite) -> None:
    """A CONNECT announcing 256 MiB before authentication is closed at once."""
    fail_on(suite.prober(listener.host).oversized_connect(_target(listener)))


@pytest.mark.listener_kind("device")
def test_device_retained_messages_bounded(listener: Param, suite: Suite) -> None:
    """A device cannot leave retained messages beyond its one status topic."""
    fail_on(suite.prober(listener.host).retained_flood(_target(listener)))


@pytest.mark.listener_kind("password")
def test_refused_login_is_traceable(listener: Param, suite: Suite) -> None:
    """A refused login reaches the broker's journal with its username and address."""
    target = _target(listener)
    attempt = suite.prober(listener.host).refused_login(target)
    if isinstance(attempt, str):
        fail_on([attempt])
        return
    user, source = attempt
    host = suite.testinfra_host(listener.broker)
    fail_on(journal_problems(host, user, source, target.id))


@pytest.mark.flood
@pytest.mark.listener_kind("password-only")
def test_password_attempts_rate_limited(listener: Param, suite: Suite) -> None:
    """A burst of new connections from one host to a password listener is rate-limited."""
    target = _target(listener)
    firewall = listener.broker.model.firewall
    if not firewall.enabled or firewall.password_rate == 0:
        pytest.skip(f"{NOT_APPLICABLE}: the inventory sets no per-source limit on {target.id}")
    source = raw_attacks.source_address(target.connect_name, target.port)
    exempt = [n for n in firewall.password_limit_exempt if ip_address(source) in ip_network(n)]
    if exempt:
        # The inside firewall check proves the limit rules and their exemptions.
        pytest.skip(
            f"{NOT_APPLICABLE}: this host ({source}) is exempt from the limit on {target.id} "
            f"(firewall_password_limit_exempt {exempt[0]})"
        )
    fail_on(suite.prober(listener.host).password_rate_limit(target, firewall.password_burst))
