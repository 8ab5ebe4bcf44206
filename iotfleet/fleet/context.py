"""Everything a rollout, a check or a handout needs about one fleet, resolved once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import SecretStr

from iotfleet.fleet.credentials import mqtt_passwords
from iotfleet.fleet.paths import fleet_dir
from iotfleet.fleet.pki import pki_settings_for
from iotfleet.fleet.secrets import SecretStore
from iotfleet.fs.stage import Stage
from iotfleet.model import Fleet
from iotfleet.pki import PkiSettings, PkiStore


@dataclass(frozen=True)
class FleetContext:
    """The fleet, where its control-machine state lives, and its resolved passwords.

    ``stage``: a planning run's recorded writes (new secrets, the PKI plan), read as if done
    until the run commits them.
    """

    fleet: Fleet
    state_dir: Path
    secrets: SecretStore
    pki_settings: PkiSettings
    passwords: dict[str, SecretStr]
    stage: Stage | None = field(default=None, compare=False)

    @classmethod
    def for_fleet(
        cls, fleet: Fleet, *, stage: Stage | None = None, read_only: bool = False
    ) -> FleetContext:
        """Resolve secrets (raises ``InventoryError`` naming owner and key on problems).

        Args:
            fleet: the validated fleet.
            stage: record secrets generated now there (a rollout being planned).
            read_only: a generated secret that does not exist yet is an error (``iotfleet
                check`` and other commands that promise to change nothing).
        """
        state_dir = fleet_dir(fleet.name)
        secrets = SecretStore(state_dir / "secrets", stage=stage, read_only=read_only)
        return cls(
            fleet=fleet,
            state_dir=state_dir,
            secrets=secrets,
            pki_settings=pki_settings_for(fleet, state_dir, secrets),
            passwords=mqtt_passwords(fleet, secrets),
            stage=stage,
        )

    @cached_property
    def pki(self) -> PkiStore:
        """The PKI's read side, one per context: its index is loaded and verified once and
        shared by every host of the run (re-read only if index.json changes on disk)."""
        return PkiStore(self.pki_settings.state_dir, self.stage)

    @cached_property
    def password_hashes(self) -> dict[tuple[str, str, int], str]:
        """Password file entries made in this run, by user, password and rounds: each is
        hashed once for every broker and listener (in memory only, never written)."""
        return {}

    @property
    def registry_path(self) -> Path:
        """The flash registry: what was flashed on which board."""
        return self.state_dir / "flash-registry.sqlite"
