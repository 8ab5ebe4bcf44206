"""The validated fleet model. Imports nothing else of iotfleet."""

from iotfleet.model.build import BROKERS_GROUP, STATIONS_GROUP, RawHost, build_fleet, known_keys
from iotfleet.model.errors import InventoryError, Problem
from iotfleet.model.fleet import (
    BUILTIN_ROLES,
    Broker,
    Client,
    Device,
    FlashStation,
    Fleet,
    KeyType,
    PkiConfig,
    Role,
    Site,
)
from iotfleet.model.secretref import SecretRef
from iotfleet.model.settings import (
    Board,
    FirewallSettings,
    GatewaySettings,
    Listener,
    MosquittoSettings,
    SshHardeningSettings,
)

__all__ = [
    "BROKERS_GROUP",
    "BUILTIN_ROLES",
    "STATIONS_GROUP",
    "Board",
    "Broker",
    "Client",
    "Device",
    "FirewallSettings",
    "FlashStation",
    "Fleet",
    "GatewaySettings",
    "InventoryError",
    "KeyType",
    "Listener",
    "MosquittoSettings",
    "PkiConfig",
    "Problem",
    "RawHost",
    "Role",
    "SecretRef",
    "Site",
    "SshHardeningSettings",
    "build_fleet",
    "known_keys",
]
