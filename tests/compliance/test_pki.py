"""Inside each broker: the certificate, key, chain and CRL are the fleet PKI's, with time left."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from cryptography import x509

from iotfleet.check.pki_checks import (
    chain_problems,
    crl_next_update,
    crl_problems,
    crl_update_problems,
    expiry_problems,
    issued_certificate_problems,
    key_problems,
    load_pem_certificates,
)
from iotfleet.check.suite import Param, Suite, fail_on
from iotfleet.mosquitto import layout

pytestmark = [pytest.mark.host, pytest.mark.pki]


def test_broker_certificate_and_key_are_the_issued_ones(broker: Param, suite: Suite) -> None:
    """The broker's certificate and key on disk are the ones the fleet PKI issued for it."""
    facts = suite.facts(broker.broker)
    pki = suite.ctx.pki
    fail_on(
        issued_certificate_problems(
            broker.host, pki.certificate_pem(broker.host), facts.read_public(layout.SERVER_CERT)
        )
        + key_problems(
            broker.host, pki.private_key_pem(broker.host), facts.sha256(layout.SERVER_KEY)
        )
    )


def test_ca_chain_is_the_fleets(broker: Param, suite: Suite) -> None:
    """The broker trusts the fleet's CA chain and nothing else."""
    on_host = suite.facts(broker.broker).read_public(layout.CA_CHAIN)
    fail_on(chain_problems(broker.host, suite.ctx.pki.ca_chain_pem(), on_host))


def test_crl_is_current(broker: Param, suite: Suite) -> None:
    """The CRL on the broker is the fleet's current one (it knows every revocation)."""
    on_host = suite.facts(broker.broker).read_public(layout.CRL)
    fail_on(crl_problems(broker.host, suite.ctx.pki.crl_pem(), on_host))


RecordExpiry = Callable[[str, str, datetime], None]


def test_certificates_valid_beyond_margin(
    broker: Param, suite: Suite, record_expiry: RecordExpiry
) -> None:
    """The broker certificate and its CA chain stay valid beyond the margin (default 14 days)."""
    facts = suite.facts(broker.broker)
    certificates: list[tuple[str, x509.Certificate]] = []
    problems = []
    for path, label in ((layout.SERVER_CERT, "broker certificate"), (layout.CA_CHAIN, "CA")):
        pem = facts.read_public(path)
        if pem is None:
            problems.append(f"{path} is missing on {broker.host}")
            continue
        try:
            loaded = load_pem_certificates(pem)
        except ValueError:
            problems.append(f"{path} on {broker.host} holds no PEM certificate")
            continue
        if label == "CA":
            for cert in loaded:
                name = f"CA '{cert.subject.rfc4514_string()}'"
                certificates.append((name, cert))
                record_expiry("ca", name, cert.not_valid_after_utc)
        else:
            certificates.append((label, loaded[0]))
            record_expiry("certificate", label, loaded[0].not_valid_after_utc)
    fail_on(problems + expiry_problems(broker.host, certificates, suite.cert_margin_days))


def test_crl_next_update_beyond_margin(
    broker: Param, suite: Suite, record_expiry: RecordExpiry
) -> None:
    """The CRL's nextUpdate is beyond the margin (default 72 hours: the CRL timer missed 2 runs).

    Past nextUpdate, Mosquitto refuses every client certificate.
    """
    on_host = suite.facts(broker.broker).read_public(layout.CRL)
    next_update = crl_next_update(on_host)
    if next_update is not None:
        record_expiry("crl", "CRL", next_update)
    fail_on(crl_update_problems(broker.host, on_host, suite.crl_margin_hours))
