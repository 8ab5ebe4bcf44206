"""From outside, as an adversary: every identity's factors on every listener, an oversized
CONNECT before authentication, a retained flood from a device, a burst of password attempts."""

from __future__ import annotations

import pytest

from iotfleet.check.plan import ListenerTarget
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


@pytest.mark.flood
@pytest.mark.listener_kind("password-only")
def test_password_attempts_rate_limited(listener: Param, suite: Suite) -> None:
    """A burst of new connections from one host to a password listener is rate-limited."""
    fail_on(suite.prober(listener.host).password_rate_limit(_target(listener)))
