"""Where each file lives in the PKI state directory (one place, so docs/pki.md stays true)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CERT_PACK_SUFFIX = ".certs.pem"
KEY_PACK_SUFFIX = ".keys.pem"


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
    def index_seal(self) -> Path:
        """SHA-256 of the index files and packs as last written, under an HMAC (seal.py)."""
        return self.root / "index.seal"

    @property
    def seal_key(self) -> Path:
        """The seal's HMAC key (0600)."""
        return self.root / "seal.key"

    @property
    def packs_dir(self) -> Path:
        return self.root / "packs"

    def cert_pack(self, pack: str) -> Path:
        """Certificates issued by one run, concatenated PEM (immutable once written)."""
        return self.packs_dir / f"{pack}{CERT_PACK_SUFFIX}"

    def key_pack(self, pack: str) -> Path:
        """Their keys (0600, immutable; removed once none of its certificates is valid)."""
        return self.packs_dir / f"{pack}{KEY_PACK_SUFFIX}"

    def is_fresh(self) -> bool:
        """True when no CA has been created here yet."""
        return not self.ca_dir.exists() and not self.index_json.exists()
