"""Shared helpers for the gateway tests: a small fleet with flash stations, emulated boards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from iotfleet.device import reference_firmware
from iotfleet.emulator import BoardServer, Faults
from iotfleet.flash import FlashOptions
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model import RawHost, build_fleet

PKI_PASSPHRASE = "unit-test-passphrase-0123"
WIFI_ENV = "IOTFLEET_TEST_WIFI"
WIFI_PASSPHRASE = "correct horse battery staple"
STATION = "@local"
REPO = Path(__file__).resolve().parents[2]


class GatewayFleet:
    """One fleet ("unit") in a private IOTFLEET_HOME; each call to ``context`` re-reads the
    inventory with other boards or station settings, the PKI stays the same."""

    def __init__(
        self,
        home: Path,
        devices: list[dict[str, Any]],
        broker_port: int = 8883,
        listeners: list[dict[str, Any]] | None = None,
    ) -> None:
        self.home = home
        self.devices = devices
        self.broker_port = broker_port
        self.listeners = listeners or [{"port": broker_port}]
        self.firmware = home / "firmware.bin"
        self.firmware.write_bytes(reference_firmware())
        self._reconciled = False

    def context(
        self, boards: list[dict[str, Any]], station_name: str = STATION, **espgw: Any
    ) -> FleetContext:
        station = {
            "espgw_wifi_ssid": "unit-wifi",
            "espgw_wifi_passphrase": f"env:{WIFI_ENV}",
            "espgw_firmware": str(self.firmware),
            "espgw_broker_port": self.broker_port,
            "espgw_boards": boards,
            **{f"espgw_{key}": value for key, value in espgw.items()},
        }
        fleet = build_fleet(
            [
                RawHost(
                    "localhost",
                    ("brokers",),
                    {
                        "fleet_name": "unit",
                        "ssh_hostname": "127.0.0.1",
                        "fleet_devices": self.devices,
                        "fleet_clients": [{"name": "ops", "roles": ["admin"]}],
                        "mosquitto_listeners": self.listeners,
                    },
                ),
                RawHost(station_name, ("flash_stations",), station),
            ]
        )
        ctx = FleetContext.for_fleet(fleet)
        if not self._reconciled:
            reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
            self._reconciled = True
        return ctx


@contextmanager
def gateway_environment(home: Path) -> Iterator[pytest.MonkeyPatch]:
    """IOTFLEET_HOME, the CA passphrase and the Wi-Fi passphrase for one test module."""
    patch = pytest.MonkeyPatch()
    patch.setenv("IOTFLEET_HOME", str(home))
    patch.setenv("IOTFLEET_PKI_PASSPHRASE", PKI_PASSPHRASE)
    patch.setenv(WIFI_ENV, WIFI_PASSPHRASE)
    try:
        yield patch
    finally:
        patch.undo()


def board(server: BoardServer, device: str, **extra: Any) -> dict[str, Any]:
    return {"port": server.url, "device": device, "flash_file": str(server.flash.path), **extra}


def emulated(path: Path, mac: str, **faults: Any) -> BoardServer:
    return BoardServer(path, mac, faults=Faults(**faults) if faults else None).start()


def options(tmp: Path, **overrides: Any) -> FlashOptions:
    values: dict[str, Any] = {
        "baud": 460800,
        "connect_attempts": 2,
        "log_dir": tmp / "logs",
        "lock_dir": tmp / "locks",
        **overrides,
    }
    return FlashOptions(**values)


def esptool_env() -> dict[str, str]:
    """Environment for esptool subprocesses: no user config file changes its behaviour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPTOOL")}
    env["NO_COLOR"] = "1"
    return env
