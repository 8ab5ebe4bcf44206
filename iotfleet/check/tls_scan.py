"""TLS from outside, with sslyze: protocol versions, cipher suites, chain and names.

One sslyze scan per listener (all listeners of a broker in one scanner, so they run at once),
limited to the cipher-suite scans of each protocol version and the certificate analysis.
The certificate is validated against the fleet's CA chain only for what matters here; the
public trust stores sslyze also reports are ignored.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from iotfleet.check.plan import ListenerTarget

SUPPLIED_STORE = "Supplied CA file"  # sslyze's name for the custom trust store

# Protocol label -> sslyze result attribute.
PROTOCOLS = {
    "SSL 2.0": "ssl_2_0_cipher_suites",
    "SSL 3.0": "ssl_3_0_cipher_suites",
    "TLS 1.0": "tls_1_0_cipher_suites",
    "TLS 1.1": "tls_1_1_cipher_suites",
    "TLS 1.2": "tls_1_2_cipher_suites",
    "TLS 1.3": "tls_1_3_cipher_suites",
}
ALLOWED = {"tlsv1.2": ("TLS 1.2", "TLS 1.3"), "tlsv1.3": ("TLS 1.3",)}


@dataclass(frozen=True)
class TlsScan:
    """What sslyze saw on one listener."""

    where: str  # host:port
    error: str | None = None  # could not scan at all (unreachable, no TLS ...)
    accepted: dict[str, tuple[str, ...]] = field(default_factory=dict)  # protocol -> suites
    failed_commands: tuple[str, ...] = ()
    chain: tuple[x509.Certificate, ...] = ()
    validation_error: str | None = "not analysed"  # against the fleet CA, for the name used


def weaknesses(suite: str) -> list[str]:
    """Why a (TLS 1.2 or older, IANA-named) cipher suite is weak; empty if it is strong."""
    if suite.startswith("TLS_") and "_WITH_" not in suite:
        return []  # TLS 1.3 suites: AEAD and ephemeral key exchange by design
    reasons = []
    kx = suite.split("_WITH_", 1)[0]
    if kx.startswith(("TLS_RSA", "SSL_RSA")) or kx in ("TLS_PSK", "TLS_RSA_PSK"):
        reasons.append("RSA key exchange (no forward secrecy)")
    elif "ECDHE" not in kx and "DHE" not in kx:
        reasons.append("no forward secrecy")
    if "_CBC_" in suite:
        reasons.append("CBC")
    elif not any(tag in suite for tag in ("_GCM_", "CHACHA20_POLY1305", "_CCM")):
        reasons.append("not AEAD")
    for marker, reason in (
        ("_NULL_", "no encryption"),
        ("_anon_", "no authentication"),
        ("EXPORT", "export grade"),
        ("RC4", "RC4"),
        ("DES", "DES/3DES"),
    ):
        if marker in suite:
            reasons.append(reason)
    return reasons


def scan_listeners(
    listeners: Sequence[ListenerTarget], ca_pem: bytes, timeout: int = 5
) -> dict[int, TlsScan]:
    """Scan every listener of one broker at once: ``{port: TlsScan}``."""
    from sslyze.errors import ServerHostnameCouldNotBeResolved
    from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
    from sslyze.plugins.scan_commands import ScanCommand
    from sslyze.scanner.models import ScanCommandsExtraArguments, ServerScanRequest
    from sslyze.scanner.scanner import Scanner
    from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

    scans: dict[int, TlsScan] = {}
    with tempfile.TemporaryDirectory(prefix="iotfleet-tls-") as directory:
        ca_file = Path(directory) / "fleet-ca.pem"
        ca_file.write_bytes(ca_pem)  # public: the CA chain clients trust
        commands = {getattr(ScanCommand, a.upper()) for a in PROTOCOLS.values()}
        commands.add(ScanCommand.CERTIFICATE_INFO)
        requests = []
        for target in listeners:
            try:
                location = ServerNetworkLocation(target.connect_name, target.port)
            except ServerHostnameCouldNotBeResolved:
                scans[target.port] = TlsScan(
                    target.id, error=f"{target.connect_name} does not resolve from here"
                )
                continue
            requests.append(
                ServerScanRequest(
                    server_location=location,
                    network_configuration=ServerNetworkConfiguration(
                        tls_server_name_indication=target.connect_name,
                        network_timeout=timeout,
                        network_max_retries=1,
                    ),
                    scan_commands=commands,
                    scan_commands_extra_arguments=ScanCommandsExtraArguments(
                        certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file)
                    ),
                )
            )
        if requests:
            scanner = Scanner()
            scanner.queue_scans(requests)
            by_port = {t.port: t for t in listeners}
            with warnings.catch_warnings():
                # sslyze's bundled public trust stores hold certificates newer cryptography
                # versions frown upon; they do not matter for a private fleet CA.
                warnings.simplefilter("ignore")
                for result in scanner.get_results():
                    port = result.server_location.port
                    scans[port] = _summarise(by_port[port], result)
    return scans


def _summarise(target: ListenerTarget, result: object) -> TlsScan:
    from sslyze.scanner.models import ServerScanStatusEnum
    from sslyze.scanner.scan_command_attempt import ScanCommandAttemptStatusEnum

    status = getattr(result, "scan_status", None)
    if status != ServerScanStatusEnum.COMPLETED:
        trace = getattr(result, "connectivity_error_trace", None)
        reason = str(trace).strip().splitlines()[-1] if trace else str(status)
        return TlsScan(target.id, error=f"no TLS connection to {target.id}: {reason}")
    attempts = getattr(result, "scan_result", None)
    accepted: dict[str, tuple[str, ...]] = {}
    failed: list[str] = []
    for label, attribute in PROTOCOLS.items():
        attempt = getattr(attempts, attribute)
        if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED or attempt.result is None:
            failed.append(label)
            continue
        accepted[label] = tuple(s.cipher_suite.name for s in attempt.result.accepted_cipher_suites)
    chain: tuple[x509.Certificate, ...] = ()
    validation_error: str | None = "the certificate analysis did not complete"
    info = getattr(attempts, "certificate_info")  # noqa: B009 - typed loosely on purpose
    if info.status == ScanCommandAttemptStatusEnum.COMPLETED and info.result is not None:
        deployments = info.result.certificate_deployments
        if deployments:
            deployment = deployments[0]
            chain = tuple(deployment.received_certificate_chain)
            supplied = [
                p
                for p in deployment.path_validation_results
                if p.trust_store.name == SUPPLIED_STORE
            ]
            validation_error = (
                supplied[0].validation_error if supplied else "no validation against the fleet CA"
            )
    return TlsScan(
        target.id,
        accepted={k: v for k, v in accepted.items() if v},
        failed_commands=tuple(failed),
        chain=chain,
        validation_error=validation_error,
    )


def protocol_problems(scan: TlsScan, tls_version: str) -> list[str]:
    """Only the inventory's TLS versions (1.2+ or 1.3) are accepted, and at least one is."""
    if scan.error:
        return [scan.error]
    allowed = ALLOWED.get(tls_version, ALLOWED["tlsv1.2"])
    problems = [
        f"{protocol} accepted on {scan.where} (allowed: {' and '.join(allowed)})"
        for protocol in PROTOCOLS
        if protocol in scan.accepted and protocol not in allowed
    ]
    if not any(protocol in scan.accepted for protocol in allowed):
        problems.append(f"no TLS version the inventory allows is accepted on {scan.where}")
    if scan.failed_commands:
        problems.append(
            f"could not test {', '.join(scan.failed_commands)} on {scan.where} (scan error)"
        )
    return problems


def cipher_problems(scan: TlsScan) -> list[str]:
    """No CBC, no RSA key exchange, no suite without forward secrecy or AEAD."""
    if scan.error:
        return [scan.error]
    problems = []
    for protocol, suites in scan.accepted.items():
        for suite in suites:
            reasons = weaknesses(suite)
            if reasons:
                problems.append(
                    f"weak cipher suite {suite} accepted over {protocol} on {scan.where}: "
                    f"{', '.join(reasons)}"
                )
    return problems


def _names_of(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


def certificate_problems(scan: TlsScan, names: Iterable[str]) -> list[str]:
    """The chain validates against the fleet CA for the name used, and covers every name."""
    if scan.error:
        return [scan.error]
    if not scan.chain:
        return [f"no certificate received from {scan.where}"]
    problems = []
    if scan.validation_error:
        problems.append(
            f"the certificate of {scan.where} does not validate against the fleet CA for the "
            f"name clients use: {scan.validation_error}"
        )
    dns, ips = _names_of(scan.chain[0])
    missing = [n for n in names if n.lower() not in dns and n not in ips]
    if missing:
        problems.append(
            f"the certificate of {scan.where} is not valid for {', '.join(missing)} (names "
            "clients use)"
        )
    return problems
