"""Shared helpers for the PKI unit tests: settings, snapshots, verification with two verifiers."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from iotfleet.pki import IdentitySpec, PkiSettings, PkiStore

PASSPHRASE = "Tr0ub4dor&3-unit-test-passphrase"
ENV = "IOTFLEET_PKI_PASSPHRASE"

BROKER = IdentitySpec(
    "broker-1", "broker", dns_names=("broker1.lan",), ip_addresses=("192.0.2.10",)
)
DEVICE = IdentitySpec("gw-0001", "device")
CLIENT = IdentitySpec("ops.alice", "client")
FLEET = (BROKER, DEVICE, CLIENT)


def settings_for(state_dir: Path, **overrides: object) -> PkiSettings:
    values: dict[str, object] = {"workers": 1, **overrides}
    return PkiSettings(state_dir=state_dir, **values)  # type: ignore[arg-type]


def snapshot(state_dir: Path) -> dict[str, tuple[str, int]]:
    """Every file and dir under state_dir: content hash (files) and mode."""
    result: dict[str, tuple[str, int]] = {}
    if not state_dir.exists():
        return result
    for root, dirs, files in os.walk(state_dir):
        for name in dirs:
            path = Path(root, name)
            result[str(path.relative_to(state_dir)) + "/"] = ("dir", path.stat().st_mode)
        for name in files:
            path = Path(root, name)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            result[str(path.relative_to(state_dir))] = (digest, path.stat().st_mode)
    return result


def verify_with_cryptography(store: PkiStore, name: str, at: datetime) -> None:
    """Raise unless the cert of ``name`` chains to the fleet root (server/client verifier)."""
    root = x509.load_pem_x509_certificate(store.root_certificate_pem())
    chain = x509.load_pem_x509_certificates(store.ca_chain_pem())
    leaf = x509.load_pem_x509_certificate(store.certificate_pem(name))
    verify_leaf(leaf, root, chain[0], at)


def verify_leaf(
    leaf: x509.Certificate,
    root: x509.Certificate,
    intermediate: x509.Certificate,
    at: datetime,
    server_name: str | None = None,
) -> None:
    builder = PolicyBuilder().store(Store([root])).time(at)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    if x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        target: x509.GeneralName
        if server_name is not None:
            target = x509.DNSName(server_name)
        elif names:
            target = x509.DNSName(names[0])
        else:
            target = x509.IPAddress(san.get_values_for_type(x509.IPAddress)[0])
        builder.build_server_verifier(target).verify(leaf, [intermediate])
    else:
        builder.build_client_verifier().verify(leaf, [intermediate])


def ip_target(value: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(value))


def openssl_verify(
    tmp: Path,
    store: PkiStore,
    cert_pem: bytes,
    *,
    at: datetime | None = None,
    crl_check_all: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -crl_check -CAfile chain -CRLfile crl` on a certificate."""
    tmp.mkdir(parents=True, exist_ok=True)
    chain, crl, leaf = tmp / "chain.pem", tmp / "crl.pem", tmp / "leaf.pem"
    chain.write_bytes(store.ca_chain_pem())
    crl_data = store.crl_pem() + (store.root_crl_pem() if crl_check_all else b"")
    crl.write_bytes(crl_data)
    leaf.write_bytes(cert_pem)
    command = [
        "openssl",
        "verify",
        "-crl_check_all" if crl_check_all else "-crl_check",
        "-CAfile",
        str(chain),
        "-CRLfile",
        str(crl),
    ]
    if at is not None:
        command += ["-attime", str(int(at.timestamp()))]
    return subprocess.run([*command, str(leaf)], capture_output=True, text=True, check=False)
