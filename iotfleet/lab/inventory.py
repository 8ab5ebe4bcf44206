"""The lab as pyinfra inventory groups (``inventory/lab.py`` assigns them at module level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotfleet.lab import naming
from iotfleet.lab.state import GatewayState, HostState, LabPaths, LabState, lab_paths, load_lab


def lab_inventory_groups(
    lab_name: str | None = None, root: Path | None = None
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``{"brokers": [(fqdn, data), ...]}`` (+ ``flash_stations`` when the lab has gateways).

    Host data uses pyinfra 3's ssh connector keys; host keys are checked strictly against the
    lab's known_hosts, which holds each host's real key. A board attached to a host (``iotfleet
    lab attach``) is listed on that host, at its device path; the others on ``@local``, at
    their loopback port.
    """
    name = naming.lab_name(lab_name)
    state = load_lab(name, root)
    paths = lab_paths(name, root)
    brokers = [(host.fqdn, _host_data(state, host, paths)) for host in state.hosts]
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"brokers": brokers}
    local: list[dict[str, Any]] = []
    attached: dict[str, list[dict[str, Any]]] = {}
    for gw in state.gateways:
        host = state.host(gw.attachment.host) if gw.attachment else None
        if gw.attachment is not None and host is not None:
            attached.setdefault(host.name, []).append(_board(gw, gw.attachment.device))
        else:
            local.append(_board(gw, f"socket://127.0.0.1:{gw.port}"))
    stations = [("@local", {"espgw_boards": local})] if local else []
    # A station host is also in ``brokers``: pyinfra merges a host's data from both groups;
    # the connection data is repeated so that the group stands on its own.
    stations += [
        (host.fqdn, {**_host_data(state, host, paths), "espgw_boards": attached[host.name]})
        for host in state.hosts
        if host.name in attached
    ]
    if stations:
        groups["flash_stations"] = stations
    return groups


def _host_data(state: LabState, host: HostState, paths: LabPaths) -> dict[str, Any]:
    return {
        "ssh_hostname": host.address,
        "ssh_user": "root",
        "ssh_key": str(paths.ssh_key),
        "ssh_known_hosts_file": str(paths.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
        # Only the control machine SSHes in. It also runs `iotfleet check`, whose TLS scans
        # open ~550 connections per listener: it is spared the password listeners' limit,
        # which every other source (another lab host) gets.
        "firewall_ssh_sources": [state.bridge_address],
        "firewall_password_limit_exempt": [state.bridge_address],
        "lab_name": state.name,
        "lab_suite": state.suite,
        "lab_address": host.address,
    }


def _board(gw: GatewayState, port: str) -> dict[str, Any]:
    return {"port": port, "device": gw.name, "flash_file": gw.flash_file, "mac": gw.mac}


def lab_device_names(lab_name: str | None = None, root: Path | None = None) -> list[str]:
    """Ids of the lab fleet's extra software devices (``lab up --devices N``)."""
    state = load_lab(naming.lab_name(lab_name), root)
    return [naming.device_name(i) for i in range(1, state.devices + 1)]


def lab_gateway_names(lab_name: str | None = None, root: Path | None = None) -> list[str]:
    """Names of the lab's emulated boards (each becomes a fleet device of the same name)."""
    state = load_lab(naming.lab_name(lab_name), root)
    return [gateway.name for gateway in state.gateways]
