"""Judge the broker's files and directories (kind, mode, owner) against the inventory."""

from __future__ import annotations

from iotfleet.check.host_facts import FileStat
from iotfleet.model import Broker, Fleet
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.bridge import edge_bridge

# What the checks expect of each file is the broker file spec itself.
ExpectedFile = layout.BrokerFile


def expected_files(fleet: Fleet, broker: Broker) -> list[ExpectedFile]:
    """Owner and mode of every file and directory iotfleet keeps on ``broker`` of ``fleet``
    (an edge broker with a bridge keeps its bridge identity too)."""
    return layout.broker_files(
        [lst.port for lst in broker.mosquitto.listeners if lst.requires_password],
        bridge=edge_bridge(fleet, broker.name) is not None,
    )


def file_problems(host: str, expected: ExpectedFile, stat: FileStat | None) -> list[str]:
    if stat is None:
        return [f"{expected.path} ({expected.what}) is missing on {host}"]
    problems = []
    if stat.kind != expected.kind:
        problems.append(f"{expected.path} on {host} is a {stat.kind}, expected a {expected.kind}")
    actual = (stat.mode4, stat.owner, stat.group)
    if actual != (expected.mode, expected.owner, expected.group):
        problems.append(
            f"{expected.path} on {host} is {stat.mode4} {stat.owner}:{stat.group}, expected "
            f"{expected.mode} {expected.owner}:{expected.group}"
            + (" (readable by every local user)" if int(stat.mode, 8) & 0o004 else "")
        )
    return problems
