"""From outside: TLS versions, cipher suites, chain and names of every TLS listener (sslyze)."""

from __future__ import annotations

import pytest

from iotfleet.check.suite import Param, Suite, fail_on
from iotfleet.check.tls_scan import certificate_problems, cipher_problems, protocol_problems

pytestmark = [pytest.mark.outside, pytest.mark.tls, pytest.mark.listener_kind("tls")]


def test_only_strong_protocol_versions(listener: Param, suite: Suite) -> None:
    """Only TLS 1.2+ (or what the inventory asks) is accepted: no SSL, no TLS 1.0 or 1.1."""
    assert listener.listener is not None
    scan = suite.tls_scan(listener.listener)
    fail_on(protocol_problems(scan, listener.broker.model.mosquitto.tls_version))


def test_only_strong_cipher_suites(listener: Param, suite: Suite) -> None:
    """Only ECDHE + AEAD cipher suites: no CBC, no RSA key exchange."""
    assert listener.listener is not None
    fail_on(cipher_problems(suite.tls_scan(listener.listener)))


def test_certificate_valid_for_client_names(listener: Param, suite: Suite) -> None:
    """The certificate chains to the fleet CA and is valid for every name clients use."""
    assert listener.listener is not None
    scan = suite.tls_scan(listener.listener)
    fail_on(certificate_problems(scan, listener.broker.client_names))
