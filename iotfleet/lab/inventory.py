"""The lab as pyinfra inventory groups (``inventory/lab.py`` assigns them at module level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotfleet.lab import naming
from iotfleet.lab.lab import load
from iotfleet.lab.state import lab_paths


def lab_inventory_groups(
    lab_name: str | None = None, root: Path | None = None
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``{"brokers": [(fqdn, data), ...]}`` (+ ``flash_stations`` when the lab has gateways).

    Host data uses pyinfra 3's ssh connector keys; host keys are checked strictly against the
    lab's known_hosts, which holds each host's real key.
    """
    name = naming.lab_name(lab_name)
    state = load(name, root)
    paths = lab_paths(name, root)
    brokers = [
        (
            host.fqdn,
            {
                "ssh_hostname": host.address,
                "ssh_user": "root",
                "ssh_key": str(paths.ssh_key),
                "ssh_known_hosts_file": str(paths.known_hosts),
                "ssh_strict_host_key_checking": "yes",
                "ssh_allow_agent": False,
                "ssh_look_for_keys": False,
                "lab_name": state.name,
                "lab_suite": state.suite,
                "lab_address": host.address,
            },
        )
        for host in state.hosts
    ]
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"brokers": brokers}
    if state.gateways:
        boards = [
            {
                "port": f"socket://127.0.0.1:{gw.port}",
                "device": gw.name,
                "flash_file": gw.flash_file,
                "mac": gw.mac,
            }
            for gw in state.gateways
        ]
        groups["flash_stations"] = [("@local", {"espgw_boards": boards})]
    return groups


def lab_gateway_names(lab_name: str | None = None, root: Path | None = None) -> list[str]:
    """Names of the lab's emulated boards (each becomes a fleet device of the same name)."""
    state = load(naming.lab_name(lab_name), root)
    return [gateway.name for gateway in state.gateways]
