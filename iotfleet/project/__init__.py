"""The repository's entry points and site files, as iotfleet runs them wherever it is installed.

``config.py``, ``deploy.py``, ``deploy/``, ``inventory/`` and ``files/`` here are links to the
checkout's top-level ones (their home) and copies in the wheel. The classroom (``pyinfra
inventory/classroom.py deploy.py``) and ``iotfleet pki refresh-crl`` (``deploy/crl.py``) run
pyinfra on them from this directory, so an installed iotfleet needs no checkout.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR = Path(__file__).parent


def project_file(relative: str) -> Path:
    """A file of the project (``deploy/crl.py``); FileNotFoundError if this install lacks it."""
    path = PROJECT_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"iotfleet's {relative} is missing from {PROJECT_DIR}")
    return path
