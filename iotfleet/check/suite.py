"""State the compliance suite shares across its checks in one pytest process.

One ``Suite`` per process (per xdist worker): the plan, the fleet context, the probe cast,
one SSH connection per broker, and facts, TLS scans and probers each made once per broker.
The pytest glue lives in ``iotfleet.compliance`` (``tests/compliance/plugin.py``, ``session.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from iotfleet.check.file_checks import ExpectedFile, expected_files
from iotfleet.check.host_facts import BrokerFacts
from iotfleet.check.identities import ProbeCast, choose_cast, listener_user
from iotfleet.check.mqtt_checks import BrokerProber
from iotfleet.check.pki_checks import CERT_MARGIN_DAYS, CRL_MARGIN_HOURS
from iotfleet.check.plan import BrokerTarget, CheckPlan, ListenerTarget
from iotfleet.check.ssh import HostConnections
from iotfleet.check.tls_scan import TlsScan, scan_listeners
from iotfleet.fleet.context import FleetContext


@dataclass(frozen=True)
class Param:
    """One parameter of a check: a broker, maybe one of its listeners or files, or the reason
    the check does not apply to that broker at all."""

    broker: BrokerTarget
    listener: ListenerTarget | None = None
    file: ExpectedFile | None = None
    not_applicable: str | None = None

    @property
    def host(self) -> str:
        return self.broker.name

    @property
    def target(self) -> str:
        if self.listener is not None:
            return self.listener.id
        if self.file is not None:
            return f"{self.host}:{self.file.path}"
        return self.host

    @property
    def id(self) -> str:
        return self.target


# Which listeners a listener check runs on (marker ``listener_kind``), and how the summary
# says that a broker has none. Kinds ending in "-configured" include loopback listeners (the
# inside checks read their configuration); the others are the ones clients reach.
LISTENER_KINDS = {
    "all": "listener",
    "tls-configured": "TLS listener",
    "certificate-configured": "listener that requires client certificates",
    "password-configured": "listener that checks passwords",
    "tls": "TLS listener reachable from other hosts",
    "reachable": "listener reachable from other hosts",
    "certificate": "reachable listener that requires client certificates",
    "password": "reachable listener that checks passwords",
    "password-only": "reachable listener that takes passwords without certificates",
    "two-factor": "reachable listener that requires a certificate and a password",
    "password-user": "reachable password listener and an active user with that password",
    "device": "reachable certificate listener and an active device with a certificate",
    "user": "reachable listener some active identity of the fleet can log in on",
}


def listener_applies(kind: str, listener: ListenerTarget, cast: ProbeCast) -> bool:
    settings = listener.listener
    inside = {
        "all": True,
        "tls-configured": settings.tls,
        "certificate-configured": settings.requires_certificate,
        "password-configured": settings.requires_password,
    }
    if kind in inside:
        return inside[kind]
    if not listener.reachable:
        return False
    user = listener_user(cast, settings)
    outside = {
        "reachable": True,
        "tls": settings.tls,
        "certificate": settings.requires_certificate,
        "password": settings.requires_password,
        "password-only": settings.auth == "password",
        "two-factor": settings.auth == "certificate+password",
        "password-user": settings.requires_password and user is not None,
        "device": settings.auth == "certificate" and cast.device is not None,
        "user": user is not None,
    }
    if kind not in outside:
        raise ValueError(f"unknown listener kind {kind}")
    return outside[kind]


def host_of_test(nodeid: str, hosts: list[str]) -> str:
    """The broker a test id belongs to (its parameter id starts with the host name); the test
    id itself for anything else. Longest names first, so ``b1`` never takes ``b10``'s tests."""
    start, end = nodeid.find("["), nodeid.rfind("]")
    if start < 0 or end < start:
        return nodeid
    param = nodeid[start + 1 : end]
    for host in sorted(hosts, key=len, reverse=True):
        if param == host or param.startswith((f"{host}:", f"{host}-")):
            return host
    return nodeid


def runs_last(item: pytest.Item) -> bool:
    """Checks marked ``flood`` trip a broker's per-source limits (the checking host is then
    held back for a while): they run after every other check of their broker."""
    return item.get_closest_marker("flood") is not None


def fail_on(problems: list[str]) -> None:
    """Fail the check with its problems, one per line (no traceback: the words are the point)."""
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class Suite:
    """Everything the checks of one process share; ``close()`` ends the SSH connections."""

    def __init__(
        self,
        plan: CheckPlan,
        *,
        probe_device: str | None = None,
        cert_margin_days: float = CERT_MARGIN_DAYS,
        crl_margin_hours: float = CRL_MARGIN_HOURS,
    ) -> None:
        self.plan = plan
        self.ctx = FleetContext.for_fleet(plan.fleet, read_only=True)
        self.cast = choose_cast(plan.fleet, self.ctx.pki, set(self.ctx.passwords), probe_device)
        self.cert_margin_days = cert_margin_days
        self.crl_margin_hours = crl_margin_hours
        self.connections = HostConnections()
        self._facts: dict[str, BrokerFacts] = {}
        self._scans: dict[str, dict[int, TlsScan]] = {}
        self._probers: dict[str, BrokerProber] = {}

    def close(self) -> None:
        self.connections.close()

    def testinfra_host(self, broker: BrokerTarget) -> Any:
        return self.connections.host(broker.name, broker.ssh)

    def facts(self, broker: BrokerTarget) -> BrokerFacts:
        if broker.name not in self._facts:
            self._facts[broker.name] = BrokerFacts(self.testinfra_host(broker), broker.name)
        return self._facts[broker.name]

    def tls_scan(self, listener: ListenerTarget) -> TlsScan:
        """The sslyze scan of ``listener`` (all TLS listeners of its broker scanned at once)."""
        if listener.broker not in self._scans:
            broker = self.plan.broker(listener.broker)
            tls = [lt for lt in broker.listeners if lt.reachable and lt.listener.tls]
            self._scans[listener.broker] = scan_listeners(tls, self.ctx.pki.ca_chain_pem())
        return self._scans[listener.broker][listener.port]

    def prober(self, broker_name: str) -> BrokerProber:
        if broker_name not in self._probers:
            self._probers[broker_name] = BrokerProber(
                self.ctx, self.plan.broker(broker_name), self.cast
            )
        return self._probers[broker_name]

    # -- parameters -----------------------------------------------------------------------------

    def broker_params(self) -> list[Param]:
        return [Param(broker) for broker in self.plan.brokers]

    def listener_params(self, kind: str) -> list[Param]:
        params: list[Param] = []
        for broker in self.plan.brokers:
            matching = [lt for lt in broker.listeners if listener_applies(kind, lt, self.cast)]
            if matching:
                params.extend(Param(broker, listener=lt) for lt in matching)
            else:
                params.append(
                    Param(
                        broker,
                        not_applicable=f"{broker.name} has no {LISTENER_KINDS[kind]}",
                    )
                )
        return params

    def file_params(self) -> list[Param]:
        return [
            Param(broker, file=expected)
            for broker in self.plan.brokers
            for expected in expected_files(self.plan.fleet, broker.model)
        ]
