"""Where a class lives on the control machine: ``$IOTFLEET_HOME/classes/<name>/``.

``class.json`` (non-secret, deterministic) and ``handouts/`` (0700: each page holds one
person's credentials). Generated secrets live with the fleet (``fleets/<name>/secrets``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from iotfleet.classroom.spec import ClassSpec
from iotfleet.fleet.paths import state_root
from iotfleet.fs.atomic import write_file_atomically

CLASS_ENV = "IOTFLEET_CLASS"


class ClassError(Exception):
    """A class cannot be found or read; the message says which and what to do."""


def classes_root() -> Path:
    return state_root() / "classes"


def class_dir(name: str) -> Path:
    return classes_root() / name


def class_file(name: str) -> Path:
    return class_dir(name) / "class.json"


def handouts_dir(name: str) -> Path:
    return class_dir(name) / "handouts"


def class_json(spec: ClassSpec) -> bytes:
    """The bytes of ``class.json``: sorted keys, fixed indentation, one trailing newline."""
    return (json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def save_class(spec: ClassSpec) -> bool:
    """Write ``class.json`` unless it already holds exactly these bytes; True if written."""
    path = class_file(spec.name)
    data = class_json(spec)
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file_atomically(path, data, mode=0o644)
    return True


def load_class(name: str) -> ClassSpec:
    path = class_file(name)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClassError(
            f"no class {name!r} ({path} is missing): create it with "
            f"`iotfleet classroom new ROSTER.csv --name {name}`"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ClassError(f"{path} cannot be read: {exc}") from None
    try:
        return ClassSpec.model_validate(raw)
    except ValidationError as exc:
        raise ClassError(f"{path} is not a valid class file: {exc.errors()[0]['msg']}") from None


def existing_classes() -> list[str]:
    root = classes_root()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/class.json"))


def current_class_name(explicit: str | None = None) -> str:
    """The class to act on: ``explicit``, else ``$IOTFLEET_CLASS``, else the only class."""
    if explicit:
        return explicit
    from_env = os.environ.get(CLASS_ENV)
    if from_env:
        return from_env
    classes = existing_classes()
    if len(classes) == 1:
        return classes[0]
    if not classes:
        raise ClassError("no class yet: create one with `iotfleet classroom new ROSTER.csv`")
    raise ClassError(
        f"several classes ({', '.join(classes)}): say which with --name or ${CLASS_ENV}"
    )
