"""``iotfleet lab status``: probe every host (nspawn alive, sshd answering) and every board."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from iotfleet.lab import network
from iotfleet.lab.attach import bridge_state
from iotfleet.lab.gateways import gateway_running
from iotfleet.lab.procs import is_alive
from iotfleet.lab.state import HostState, LabState, load_lab


@dataclass(frozen=True)
class HostStatus:
    name: str
    fqdn: str
    address: str
    suite: str
    state: str  # running | no-ssh | stopped


@dataclass(frozen=True)
class GatewayStatus:
    name: str
    port: int
    mac: str
    state: str  # running | not-listening | stopped
    attached: str | None = None  # "HOST:DEVICE" when attached to a lab host
    bridge: str | None = None  # running | stopped | stale, when attached


def status(
    name: str, root: Path | None = None
) -> tuple[LabState, list[HostStatus], list[GatewayStatus]]:
    """Probe every host (nspawn process alive, sshd answering) and every gateway."""
    state = load_lab(name, root)

    def probe(host: HostState) -> HostStatus:
        if not is_alive(host.process):
            verdict = "stopped"
        else:
            banner = network.tcp_banner(host.address, 22, timeout=2)
            verdict = "running" if banner and banner.startswith(b"SSH-") else "no-ssh"
        return HostStatus(host.name, host.fqdn, host.address, state.suite, verdict)

    with ThreadPoolExecutor(max_workers=max(1, min(len(state.hosts), 32))) as pool:
        hosts = list(pool.map(probe, state.hosts))
    gateways = [
        GatewayStatus(
            g.name,
            g.port,
            g.mac,
            "running"
            if gateway_running(g)
            else ("not-listening" if is_alive(g.process) else "stopped"),
            attached=f"{g.attachment.host}:{g.attachment.device}" if g.attachment else None,
            bridge=bridge_state(state, g),
        )
        for g in state.gateways
    ]
    return state, hosts, gateways
