"""Where each file lives in the PKI state directory (one place, so docs/pki.md stays true)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def serial_hex(serial: int) -> str:
    """Serial as 40 lowercase hex digits (159-bit serials always fit)."""
    return f"{serial:040x}"


@dataclass(frozen=True)
class StateLayout:
    """Paths inside one state directory."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def root_cert(self) -> Path:
        return self.ca_dir / "root.crt"

    @property
    def root_key(self) -> Path:
        """Encrypted; may be absent: the root is offline."""
        return self.ca_dir / "root.key"

    @property
    def intermediate_cert(self) -> Path:
        return self.ca_dir / "intermediate.crt"

    @property
    def intermediate_key(self) -> Path:
        return self.ca_dir / "intermediate.key"

    @property
    def chain(self) -> Path:
        """Intermediate + root: what brokers and devices trust."""
        return self.ca_dir / "chain.pem"

    @property
    def root_crl(self) -> Path:
        """The root's CRL (revokes intermediates); for verifiers that check the whole chain."""
        return self.ca_dir / "root.crl.pem"

    @property
    def crl(self) -> Path:
        """The intermediate's CRL (revokes leaves): Mosquitto's crlfile."""
        return self.root / "crl.pem"

    @property
    def index_json(self) -> Path:
        return self.root / "index.json"

    @property
    def index_txt(self) -> Path:
        return self.root / "index.txt"

    @property
    def issued_dir(self) -> Path:
        return self.root / "issued"

    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    def cert_path(self, name: str, serial: int) -> Path:
        """Every certificate ever issued keeps its own immutable file."""
        return self.issued_dir / f"{name}.{serial_hex(serial)}.crt"

    def key_path(self, name: str, serial: int) -> Path:
        """A fresh key per certificate: a new file, never an overwrite."""
        return self.private_dir / f"{name}.{serial_hex(serial)}.key"

    def is_fresh(self) -> bool:
        """True when no CA has been created here yet."""
        return not self.ca_dir.exists() and not self.index_json.exists()
