"""Every inventory key with its default and one-line description (``iotfleet keys``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from iotfleet.model.build import PREFIXED_MODELS
from iotfleet.model.fleet import Client, Device, Role, Site
from iotfleet.model.settings import Board, Listener

# Items of list- or dict-valued keys, documented field by field.
ITEM_MODELS: dict[str, type[BaseModel]] = {
    "mosquitto_listeners[]": Listener,
    "espgw_boards[]": Board,
    "fleet_devices[]": Device,
    "fleet_clients[]": Client,
    "fleet_roles{}": Role,
    "fleet_sites[]": Site,
}

FLEET_KEYS: dict[str, str] = {
    "fleet_name": "short name of the fleet (its state lives under fleets/<name>/)",
    "fleet_topic_root": "topic root of device prefixes (default devices)",
    "fleet_devices": "devices with their own identity (see fleet_devices[] below)",
    "fleet_clients": "people and services (see fleet_clients[] below)",
    "fleet_roles": "extra roles on top of admin, dashboard and operator",
    "fleet_sites": "sites of edge brokers bridged to the cores (see fleet_sites[] below); "
    "none: every device on every broker",
    "fleet_core_brokers": "broker hosts the edges of every site bridge to, in failover order",
}


@dataclass(frozen=True)
class KeyDoc:
    key: str
    default: str
    description: str


def _default_text(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined:
        return "-"
    return str(to_jsonable_python(value))


def _model_keys(model: type[BaseModel], prefix: str) -> list[KeyDoc]:
    return [
        KeyDoc(prefix + name, _default_text(model, name), info.description or "")
        for name, info in model.model_fields.items()
    ]


def inventory_keys() -> list[KeyDoc]:
    """Fleet keys, then each role's prefixed keys, then the fields of list items."""
    docs = [KeyDoc(key, "-", text) for key, text in FLEET_KEYS.items()]
    for prefix, model in PREFIXED_MODELS.items():
        docs.extend(_model_keys(model, prefix))
    for key, model in ITEM_MODELS.items():
        docs.extend(_model_keys(model, f"{key}."))
    return docs
