"""Everything a rollout, a check or a handout needs about one fleet, resolved once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from iotfleet.credentials import mqtt_passwords
from iotfleet.fleet_pki import pki_settings_for
from iotfleet.model import Fleet
from iotfleet.paths import fleet_dir
from iotfleet.pki import PkiSettings, PkiStore
from iotfleet.secrets import SecretStore


@dataclass(frozen=True)
class FleetContext:
    """The fleet, where its control-machine state lives, and its resolved passwords."""

    fleet: Fleet
    state_dir: Path
    secrets: SecretStore
    pki_settings: PkiSettings
    passwords: dict[str, SecretStr]

    @classmethod
    def for_fleet(cls, fleet: Fleet) -> FleetContext:
        """Resolve secrets (raises ``InventoryError`` naming owner and key on problems)."""
        state_dir = fleet_dir(fleet.name)
        secrets = SecretStore(state_dir / "secrets")
        return cls(
            fleet=fleet,
            state_dir=state_dir,
            secrets=secrets,
            pki_settings=pki_settings_for(fleet, state_dir),
            passwords=mqtt_passwords(fleet, secrets),
        )

    @property
    def pki(self) -> PkiStore:
        return PkiStore(self.pki_settings.state_dir)

    @property
    def registry_path(self) -> Path:
        """The flash registry: what was flashed on which board."""
        return self.state_dir / "flash-registry.sqlite"
