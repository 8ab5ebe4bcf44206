"""Where iotfleet keeps state on the control machine (always outside the git checkout)."""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """Root of all control-machine state: PKI, secrets, registries, lab.

    ``IOTFLEET_HOME`` wins; otherwise ``$XDG_DATA_HOME/iotfleet`` or ``~/.local/share/iotfleet``.
    """
    explicit = os.environ.get("IOTFLEET_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "iotfleet").resolve()


def fleet_dir(fleet_name: str) -> Path:
    """Directory holding one fleet's PKI, generated secrets and flash registry."""
    return state_root() / "fleets" / fleet_name


def reports_dir() -> Path:
    """Default directory for compliance reports (``IOTFLEET_REPORTS`` overrides)."""
    explicit = os.environ.get("IOTFLEET_REPORTS")
    return Path(explicit).resolve() if explicit else Path.cwd() / "reports"
