"""Inventory values are taken as written: ``"no"`` is not ``False``.

pydantic's lax mode turns the strings ``"no"``, ``"off"``, ``"0"`` (and the numbers 0 and 1) into
booleans. In an inventory that hides a mistake: ``mosquitto_persistence = "no"`` reads like a
setting but is a typo'd Python literal away from ``"yes"``. Every boolean setting must be a real
``True`` or ``False``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def _accepts_bool_only(annotation: Any) -> bool:
    """True for ``bool`` and ``bool | None`` fields."""
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set(typing.get_args(annotation)) <= {bool, type(None)}
    return False


def reject_loose_boolean(model: type[BaseModel], field: str | None, value: Any) -> Any:
    """``value`` unchanged, unless ``field`` of ``model`` is a boolean and ``value`` is not."""
    info = model.model_fields.get(field or "")
    is_boolean = info is not None and _accepts_bool_only(info.annotation)
    if is_boolean and value is not None and not isinstance(value, bool):
        raise ValueError(f"must be True or False, not {value!r}")
    return value
