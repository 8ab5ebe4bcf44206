"""From outside: who gets in on each listener, and what a valid client may publish and read."""

from __future__ import annotations

import pytest

from iotfleet.check.identities import REFUSED_KINDS, listener_user
from iotfleet.check.plan import ListenerTarget
from iotfleet.check.suite import Param, Suite, fail_on

pytestmark = [pytest.mark.outside, pytest.mark.mqtt]


def _target(param: Param) -> ListenerTarget:
    assert param.listener is not None
    return param.listener


@pytest.mark.listener_kind("reachable")
def test_anonymous_refused(listener: Param, suite: Suite) -> None:
    """Anonymous clients are refused."""
    fail_on(suite.prober(listener.host).anonymous(_target(listener)))


@pytest.mark.listener_kind("certificate")
def test_no_client_certificate_refused(listener: Param, suite: Suite) -> None:
    """Clients without a certificate are refused (even with a valid password)."""
    fail_on(suite.prober(listener.host).no_certificate(_target(listener)))


@pytest.mark.listener_kind("certificate")
@pytest.mark.parametrize("refused", REFUSED_KINDS)
def test_untrusted_certificate_refused(listener: Param, refused: str, suite: Suite) -> None:
    """Certificates from another CA, revoked or expired ones are refused by TLS."""
    fail_on(suite.prober(listener.host).untrusted_certificate(_target(listener), refused))


@pytest.mark.listener_kind("password")
def test_wildcard_or_empty_username_refused(listener: Param, suite: Suite) -> None:
    """Usernames '#', '+' and '' with an empty password are refused."""
    fail_on(suite.prober(listener.host).wildcard_username(_target(listener)))


@pytest.mark.listener_kind("password-user")
def test_empty_password_refused(listener: Param, suite: Suite) -> None:
    """A valid user with an empty password is refused."""
    fail_on(suite.prober(listener.host).empty_password(_target(listener)))


@pytest.mark.listener_kind("password-user")
def test_wrong_password_refused(listener: Param, suite: Suite) -> None:
    """A valid user with a wrong password is refused (its right password is accepted)."""
    fail_on(suite.prober(listener.host).wrong_password(_target(listener)))


@pytest.mark.listener_kind("device")
def test_device_publishes_to_its_own_topic(listener: Param, suite: Suite) -> None:
    """A valid device can publish to its own telemetry topic."""
    fail_on(suite.prober(listener.host).own_topic(_target(listener)))


@pytest.mark.listener_kind("user")
def test_publishes_only_where_granted(listener: Param, suite: Suite) -> None:
    """A valid client cannot publish to another device's topics or outside its grants."""
    target = _target(listener)
    user = listener_user(suite.cast, target.listener)
    assert user is not None
    fail_on(suite.prober(listener.host).publish_only_granted(target, user))


@pytest.mark.listener_kind("user")
def test_reads_only_what_is_granted(listener: Param, suite: Suite) -> None:
    """A valid client cannot read another device's topics, '#' or '$SYS/#' beyond its grants."""
    target = _target(listener)
    user = listener_user(suite.cast, target.listener)
    assert user is not None
    fail_on(suite.prober(listener.host).read_only_granted(target, user))
