"""Bridge identities in the fleet PKI: one per edge broker, its own kind, revocable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import fleet_identities, reconcile_fleet
from iotfleet.model import RawHost, build_fleet
from iotfleet.model.own_identities import bridge_identity_name

PASSPHRASE = "unit-test-passphrase-0123"


def sited_hosts(**site: Any) -> list[RawHost]:
    data = {
        "fleet_name": "plants",
        "fleet_core_brokers": ["core-1"],
        "fleet_sites": [{"name": "a", "edges": ["edge-a1", "edge-a2"], **site}],
        "fleet_devices": [{"id": "gw-a", "site": "a"}],
    }
    return [
        RawHost(name, ("brokers",), {"ssh_hostname": f"192.0.2.{i + 10}", **data})
        for i, name in enumerate(("core-1", "edge-a1", "edge-a2"))
    ]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    return tmp_path


def test_each_edge_gets_a_bridge_identity_and_cores_get_none() -> None:
    specs = {s.name: s for s in fleet_identities(build_fleet(sited_hosts()))}
    bridges = sorted(name for name, spec in specs.items() if spec.kind == "bridge")
    assert bridges == ["iotfleet-bridge-edge-a1", "iotfleet-bridge-edge-a2"]
    assert specs["iotfleet-bridge-edge-a1"].revoked_reason is None


def test_bridge_certificate_is_a_client_certificate_named_for_its_edge(home: Path) -> None:
    fleet = build_fleet(sited_hosts())
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    name = bridge_identity_name("edge-a1")
    cert = x509.load_pem_x509_certificate(ctx.pki.certificate_pem(name))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:iotfleet:bridge:{name}"
    ]
    record = ctx.pki.record(name)
    assert record is not None and record.kind == "bridge"
    assert b"PRIVATE KEY" in ctx.pki.private_key_pem(name)


def test_revoking_a_sites_bridges_puts_them_in_the_crl(home: Path) -> None:
    fleet = build_fleet(sited_hosts())
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    serials = {
        edge: x509.load_pem_x509_certificate(
            ctx.pki.certificate_pem(bridge_identity_name(edge))
        ).serial_number
        for edge in ("edge-a1", "edge-a2")
    }
    crl = x509.load_pem_x509_crl(ctx.pki.crl_pem())
    assert all(crl.get_revoked_certificate_by_serial_number(s) is None for s in serials.values())

    revoked = build_fleet(sited_hosts(bridge_revoked="keyCompromise"))
    reconcile_fleet(revoked, ctx.pki_settings, ctx.state_dir)
    crl = x509.load_pem_x509_crl(ctx.pki.crl_pem())
    for serial in serials.values():
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise
