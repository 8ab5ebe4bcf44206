"""The multi-site lab (issue 15): 2 sites x 2 edge brokers + 2 core brokers, shared by modules.

``open_sites_lab`` brings the lab (``lab_factory(..., tag="sites")``) and rolls the topology out
with ``--data`` on the real ``pyinfra`` CLI; the lab's group_data stays as it is. One lab per
Debian suite (``<prefix>-<suite>-sites``).

The lab has one emulated ESP8266 board (``GATEWAYS``), a device of site a: the rollout flashes
it with the real esptool, and its image lists site a's edges, then the cores.
``SitesLab.gateway`` boots the gateway simulator from that flash on the control machine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotfleet.check.mqtt_probe import Identity, Session, session, succeeded
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.inventory import OVERRIDE_DATA_ENV
from iotfleet.gateway import Backoff, GatewaySimulator, read_bundle
from tests.integration.conftest import LabFactory, LabHost, RunningLab
from tests.support.broker_clients import identity_of, target
from tests.support.lab_fleet import lab_context
from tests.support.rollout import Rollout, run_pyinfra

PORT = 8883  # the certificate listener: devices, the admin client, the edges' bridges
# A bridge reconnects after a back-off (Mosquitto: 5 s growing to 30 s) plus TLS: generous.
BRIDGE_TIMEOUT = 180
GATEWAYS = 1  # emulated boards, each a device of site a


@dataclass
class SitesLab:
    lab: RunningLab
    core_1: LabHost
    core_2: LabHost
    edge_a: LabHost
    edge_a2: LabHost
    edge_b: LabHost
    edge_b2: LabHost
    ctx: FleetContext | None = None

    @property
    def edges(self) -> tuple[LabHost, ...]:
        return (self.edge_a, self.edge_a2, self.edge_b, self.edge_b2)

    def data(self, *, b_revoked: bool = False) -> dict[str, Any]:
        site_b: dict[str, Any] = {"name": "b", "edges": [self.edge_b.fqdn, self.edge_b2.fqdn]}
        if b_revoked:
            site_b["bridge_revoked"] = "keyCompromise"
        return {
            "fleet_core_brokers": [self.core_1.fqdn, self.core_2.fqdn],
            "fleet_sites": [{"name": "a", "edges": [self.edge_a.fqdn, self.edge_a2.fqdn]}, site_b],
            "fleet_devices": [
                {"id": "sensor-a", "site": "a"},
                {"id": "sensor-b", "site": "b"},
                *({"id": name, "site": "a", "group": "gateways"} for name in self.gateway_names),
            ],
        }

    def rollout(self, *, b_revoked: bool = False) -> Rollout:
        data = self.data(b_revoked=b_revoked)
        args = [
            arg for key, value in data.items() for arg in ("--data", f"{key}={json.dumps(value)}")
        ]
        # The same overrides for this process's own view of the fleet (lab_context).
        os.environ[OVERRIDE_DATA_ENV] = json.dumps(data)
        result = run_pyinfra(self.lab.name, "deploy.py", *args)
        self.ctx = lab_context(self.lab.name)
        return result

    def converge(self, *, b_revoked: bool = False) -> float:
        started = time.monotonic()
        result = self.rollout(b_revoked=b_revoked)
        assert result.returncode == 0, result.explain()
        seconds = time.monotonic() - started
        again = self.rollout(b_revoked=b_revoked)
        assert again.returncode == 0 and again.changed == 0, again.explain()
        return seconds

    def host(self, broker_name: str) -> LabHost:
        return next(h for h in self.lab.hosts if broker_name in (h.fqdn, h.name, h.address))

    @property
    def gateway_names(self) -> list[str]:
        return [str(board["name"]) for board in self.lab.gateways]

    def gateway(self, device_id: str, **options: Any) -> GatewaySimulator:
        """The flashed gateway ``device_id``, booted from its board's flash (``options``: as for
        ``GatewaySimulator``; telemetry every second and a short back-off unless given)."""
        board = next(b for b in self.lab.gateways if b["name"] == device_id)
        options.setdefault("telemetry_interval", 1.0)
        options.setdefault("backoff", Backoff(initial=0.5, maximum=2.0))
        return GatewaySimulator(read_bundle(Path(str(board["flash_file"]))), **options)

    def identity(self, name: str) -> Identity:
        assert self.ctx is not None
        return identity_of(self.ctx, name)

    def connect(self, host: LabHost, name: str) -> AbstractContextManager[Session]:
        assert self.ctx is not None
        return session(target(self.ctx, host.address, PORT), self.identity(name))


def crosses(publisher: Session, consumer: Session, topic: str) -> bool:
    """Publish once more; whether the consumer has received ``topic`` by now."""
    assert succeeded(publisher.publish(topic, b"21.5"))
    return bool(consumer.messages(topic))


@contextmanager
def open_sites_lab(lab_factory: LabFactory, suite: str = "bookworm") -> Iterator[SitesLab]:
    """The 6-broker sites lab of ``suite``, rolled out (and once more: no change); each suite
    has a lab of its own."""
    previous = os.environ.get(OVERRIDE_DATA_ENV)
    lab = lab_factory(suite=suite, brokers=6, gateways=GATEWAYS, tag="sites")
    core_1, core_2, edge_a, edge_a2, edge_b, edge_b2 = lab.hosts[:6]
    lab_sites = SitesLab(lab, core_1, core_2, edge_a, edge_a2, edge_b, edge_b2)
    try:
        seconds = lab_sites.converge()
        print(f"\nfirst rollout of the 6-broker sites fleet ({suite}): {seconds:.0f} s")
        yield lab_sites
    finally:
        if previous is None:
            os.environ.pop(OVERRIDE_DATA_ENV, None)
        else:
            os.environ[OVERRIDE_DATA_ENV] = previous
