"""Inside each broker: the effective configuration of every listener, and the ACL file."""

from __future__ import annotations

import pytest

from iotfleet.check.access_checks import (
    acl_problems,
    identities_file_problems,
    password_file_problems,
)
from iotfleet.check.broker_config_checks import (
    acl_config_problems,
    anonymous_problems,
    authentication_problems,
    crl_config_problems,
    limit_problems,
    plugin_problems,
    tls_config_problems,
)
from iotfleet.check.service_checks import memory_problems
from iotfleet.check.suite import Param, Suite, fail_on
from iotfleet.model import Listener
from iotfleet.mosquitto import layout

pytestmark = [pytest.mark.host, pytest.mark.config]


def _listener(param: Param) -> Listener:
    assert param.listener is not None
    return param.listener.listener


@pytest.mark.listener_kind("all")
def test_anonymous_clients_disabled(listener: Param, suite: Suite) -> None:
    """Anonymous clients are disabled (allow_anonymous false)."""
    config = suite.facts(listener.broker).config
    fail_on(anonymous_problems(listener.host, _listener(listener), config))


@pytest.mark.listener_kind("all")
def test_credentials_required(listener: Param, suite: Suite) -> None:
    """Client certificates and/or passwords are required as the inventory says."""
    config = suite.facts(listener.broker).config
    fail_on(authentication_problems(listener.host, _listener(listener), config))


@pytest.mark.listener_kind("tls-configured")
def test_tls_versions_and_ciphers_configured(listener: Param, suite: Suite) -> None:
    """tls_version and cipher lists are the inventory's (TLS 1.2+, ECDHE + AEAD)."""
    config = suite.facts(listener.broker).config
    fail_on(tls_config_problems(listener.host, listener.broker.model, _listener(listener), config))


@pytest.mark.listener_kind("certificate-configured")
def test_crl_enforced(listener: Param, suite: Suite) -> None:
    """Listeners that take certificates check them against the fleet's CRL."""
    config = suite.facts(listener.broker).config
    fail_on(crl_config_problems(listener.host, _listener(listener), config))


@pytest.mark.listener_kind("all")
def test_acl_enforced(listener: Param, suite: Suite) -> None:
    """Every listener enforces the fleet's ACL file."""
    config = suite.facts(listener.broker).config
    fail_on(acl_config_problems(listener.host, _listener(listener), config))


def test_acl_grants_only_the_inventory(broker: Param, suite: Suite) -> None:
    """The ACL file grants exactly what the inventory grants, user by user."""
    text = suite.facts(broker.broker).read_public(layout.ACL_FILE)
    if text is None:
        fail_on([f"{layout.ACL_FILE} is missing on {broker.host}"])
        return
    fleet = suite.plan.fleet
    fail_on(acl_problems(broker.host, fleet, broker.host, text.decode(errors="replace")))


def test_identities_file_holds_only_this_brokers_identities(broker: Param, suite: Suite) -> None:
    """The plugin's identities file lists exactly the identities this broker holds."""
    names = suite.facts(broker.broker).usernames(layout.IDENTITIES_FILE)
    fleet = suite.plan.fleet
    fail_on(identities_file_problems(broker.host, fleet, broker.host, names))


@pytest.mark.listener_kind("all")
def test_auth_plugin_loaded(listener: Param, suite: Suite) -> None:
    """iotfleet's plugin guards the listener (CN = username, local-only health, retained)."""
    config = suite.facts(listener.broker).config
    fleet = suite.plan.fleet
    model = listener.broker.model
    fail_on(plugin_problems(listener.host, fleet, model, _listener(listener), config))


@pytest.mark.listener_kind("password-configured")
def test_password_file_holds_only_this_listeners_logins(listener: Param, suite: Suite) -> None:
    """Each password listener has its own file, with exactly the usernames allowed there."""
    settings = _listener(listener)
    names = suite.facts(listener.broker).usernames(layout.password_file(settings.port))
    fleet = suite.plan.fleet
    fail_on(password_file_problems(listener.host, fleet, listener.host, settings, names))


def test_packets_and_queues_bounded(broker: Param, suite: Suite) -> None:
    """max_packet_size (checked before authentication), in-flight and queued limits."""
    config = suite.facts(broker.broker).config
    fail_on(limit_problems(broker.host, broker.broker.model, config))


def test_memory_ceiling(broker: Param, suite: Suite) -> None:
    """The broker's unit has MemoryHigh/MemoryMax sized to its connection limit."""
    fail_on(memory_problems(broker.host, broker.broker.model, suite.facts(broker.broker).unit))
