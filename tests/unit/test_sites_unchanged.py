"""A fleet without ``fleet_sites`` renders exactly the broker files it rendered before sites.

The digests below were computed on main before sites existed (commit 0fd1f01), with the same
render functions the rollout uses; ``CHANGED_SINCE`` holds the files changed on purpose since,
and why. Generated secrets are pinned per slot (a digest of the
slot name) so that the password files are reproducible; everything else is the real code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from iotfleet.check.plan import read_inventory
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.secrets import SecretStore
from iotfleet.model import Fleet, RawHost, build_fleet
from iotfleet.roles.mosquitto.render import service_files

REPO = Path(__file__).resolve().parents[2]

# A fleet shaped like the lab's (inventory/group_data/lab.py with two brokers and one
# emulated gateway): every listener kind, clients of every auth, a revoked device.
LAB_SHAPED = {
    "fleet_name": "lab-shaped",
    "fleet_devices": [
        {"id": "sensor-1", "group": "software"},
        {"id": "sensor-2", "group": "software"},
        {"id": "sensor-stolen", "group": "software", "revoked": "keyCompromise"},
        {"id": "lab-gw-1", "group": "gateways"},
    ],
    "fleet_clients": [
        {"name": "ops", "roles": ["admin"]},
        {
            "name": "control-room",
            "roles": ["operator"],
            "auth": "certificate+password",
            "password": "generated",
        },
        {"name": "wallboard", "roles": ["dashboard"], "auth": "password", "password": "generated"},
    ],
    "mosquitto_listeners": [
        {"port": 8883},
        {"port": 8884, "auth": "password"},
        {"port": 8885, "auth": "certificate+password"},
        {"port": 8443, "protocol": "websockets", "auth": "password"},
    ],
    "ssh_hardening_enabled": True,
    "pki_passphrase_generated": True,
}

PINNED: dict[str, dict[str, str]] = {
    "lab-shaped": {
        "lab-broker-1 mosquitto.conf": "6b33ca8775260672",
        "lab-broker-1 acl": "5bf973de6bb38559",
        "lab-broker-1 iotfleet-hardening.conf": "3e658ec25d8c1863",
        "lab-broker-1 passwd-8884": "994ad440f89f6ca9",
        "lab-broker-1 passwd-8885": "2706c6d99d5115cd",
        "lab-broker-1 passwd-8443": "caecbc3b8413c0bf",
        "lab-broker-2 mosquitto.conf": "e555a698074192fb",
        "lab-broker-2 acl": "2a3f8f5a1329da68",
        "lab-broker-2 iotfleet-hardening.conf": "3e658ec25d8c1863",
        "lab-broker-2 passwd-8884": "bc7db1c9590b91c9",
        "lab-broker-2 passwd-8885": "72989a884510b400",
        "lab-broker-2 passwd-8443": "efdf309f91caf719",
    },
    "example": {
        "mqtt1.plant-a.example.net mosquitto.conf": "b7bdddba6540dcd2",
        "mqtt1.plant-a.example.net acl": "c250471679cdac55",
        "mqtt1.plant-a.example.net iotfleet-hardening.conf": "70f2ac8c19e096d3",
        "mqtt1.plant-a.example.net passwd-8884": "81ca6de952238fbe",
        "mqtt2.plant-a.example.net mosquitto.conf": "1c36fa3bf2052b81",
        "mqtt2.plant-a.example.net acl": "f33f536632e4608f",
        "mqtt2.plant-a.example.net iotfleet-hardening.conf": "5f982a4f840e550f",
    },
}


# Changed on purpose since (issue 16, items 3 and 4): the ACL says the device contract once, by
# ``pattern`` lines, instead of one block per device; the plugin lets only the broker's
# identities in, so mosquitto.conf gains ``plugin_opt_identities_file`` on each listener and
# the broker gains the identities file. Item 2: a user's password entry is the same on every
# listener and broker (its salt no longer depends on either), so a run hashes it once; the
# password files hold the same users as before. Every other file renders as it did before.
CHANGED_SINCE: dict[str, dict[str, str]] = {
    "example": {
        "mqtt1.plant-a.example.net acl": "e0d86073b4890491",
        "mqtt1.plant-a.example.net identities": "9b233f75a5670d45",
        "mqtt1.plant-a.example.net mosquitto.conf": "3df760149ae45c8b",
        "mqtt2.plant-a.example.net acl": "211de026e6629fb7",
        "mqtt2.plant-a.example.net identities": "22708c373aa2952c",
        "mqtt2.plant-a.example.net mosquitto.conf": "ecdeaca2206d4599",
        "mqtt1.plant-a.example.net passwd-8884": "062b5a653caaf0c3",
    },
    "lab-shaped": {
        "lab-broker-1 acl": "84c419a905b809a3",
        "lab-broker-1 identities": "1afadeb3d6194f36",
        "lab-broker-1 mosquitto.conf": "6a548945dc465321",
        "lab-broker-2 acl": "0a9ea04dfd5a40cd",
        "lab-broker-2 identities": "668e0f01afb4b668",
        "lab-broker-2 mosquitto.conf": "56c499fe711a69ea",
        "lab-broker-1 passwd-8443": "22163105504092ce",
        "lab-broker-1 passwd-8884": "22163105504092ce",
        "lab-broker-1 passwd-8885": "5af2517c5b00487b",
        "lab-broker-2 passwd-8443": "d76c09508c642b99",
        "lab-broker-2 passwd-8884": "d76c09508c642b99",
        "lab-broker-2 passwd-8885": "ae74e3cf7a733670",
    },
}


def _pinned_secret(_store: SecretStore, slot: str) -> str:
    return hashlib.sha256(f"pinned:{slot}".encode()).hexdigest()[:32]


def _lab_shaped_fleet() -> Fleet:
    hosts = [
        RawHost(
            f"lab-broker-{i}",
            ("brokers", "lab"),
            {**LAB_SHAPED, "ssh_hostname": f"10.99.0.{10 + i}", "ssh_user": "root"},
        )
        for i in (1, 2)
    ]
    return build_fleet(hosts)


def _example_fleet() -> Fleet:
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return build_fleet(read_inventory(REPO / "inventory" / "example.py"))
    finally:
        os.chdir(cwd)


def rendered_digests(fleet: Fleet) -> dict[str, str]:
    """``{"<broker> <file name>": sha256 prefix}`` of every rendered file but the plugin."""
    ctx = FleetContext.for_fleet(fleet)
    digests = {}
    for broker in fleet.brokers:
        _, files = service_files(ctx, broker)
        for managed in files:
            if managed.path.endswith(".so"):
                continue  # compiled on this machine: not a rendering
            name = managed.path.rsplit("/", 1)[1]
            digests[f"{broker.name} {name}"] = hashlib.sha256(managed.content).hexdigest()[:16]
    return digests


@pytest.mark.parametrize("which", ["example", "lab-shaped"])
def test_fleets_without_sites_render_byte_identical_broker_files(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("PLANT_A_WIFI_PASSPHRASE", "unused-by-brokers")
    monkeypatch.setattr(SecretStore, "generated", _pinned_secret)
    fleet = _example_fleet() if which == "example" else _lab_shaped_fleet()
    digests = rendered_digests(fleet)
    assert digests == {**PINNED[which], **CHANGED_SINCE[which]}
