"""Read side of the PKI for roles and the flash image builder: no passphrase, no writes."""

from __future__ import annotations

from pathlib import Path

from iotfleet.fs.stage import Stage
from iotfleet.pki import fsio
from iotfleet.pki.errors import IndexCorruptError, PkiError, StateError
from iotfleet.pki.index import Index, IndexRecord, load_index
from iotfleet.pki.layout import StateLayout


class KeyOnBoardError(PkiError, LookupError):
    """The identity's private key exists only on its board (re-keyed over the air)."""


class NotIssuedError(PkiError, LookupError):
    """The name has no valid certificate (never issued, or revoked)."""


class PkiStore:
    """Certificates, keys and CRLs of one state dir, by identity name.

    The index is verified when first read and re-read only when index.json changes, so asking
    for 10,000 certificates in a row costs one index load. ``stage``: a planning run's staged
    writes, read as if committed (until they are).
    """

    def __init__(self, state_dir: Path, stage: Stage | None = None) -> None:
        self.layout = StateLayout(Path(state_dir))
        self._stage = stage
        self._index: Index | None = None
        self._stamp: tuple[int, int, int] | None = None
        # The index a planning run staged, with the exact bytes it was loaded from: a later
        # staged write of index.json (another writer in the same plan) replaces those bytes,
        # so the cache cannot outlive them.
        self._staged: tuple[bytes, Index] | None = None

    def _planned(self) -> Stage | None:
        """The stage while its writes are not on disk yet."""
        return self._stage if self._stage is not None and not self._stage.committed else None

    # -- CA side ---------------------------------------------------------------------------

    def ca_chain_pem(self) -> bytes:
        """Issuing intermediate + root: the trust file for brokers (cafile) and devices."""
        return self._read(self.layout.chain)

    def root_certificate_pem(self) -> bytes:
        """Only the root (for clients that want a single trust anchor)."""
        return self._read(self.layout.root_cert)

    def crl_pem(self) -> bytes:
        """The intermediate's CRL: Mosquitto's ``crlfile`` (it checks the leaf only)."""
        return self._read(self.layout.crl)

    def root_crl_pem(self) -> bytes:
        """The root's CRL over intermediates, for verifiers that check the whole chain."""
        return self._read(self.layout.root_crl)

    # -- identities --------------------------------------------------------------------------

    def records(self) -> list[IndexRecord]:
        """Every certificate ever issued, in issuance order (valid and revoked)."""
        return list(self._load().records)

    def record(self, name: str) -> IndexRecord | None:
        """The valid record of ``name``, else its most recent (revoked) one, else None."""
        index = self._load()
        current = index.current(name)
        if current is not None:
            return current
        return next((r for r in reversed(index.records) if r.name == name), None)

    def certificate_pem(self, name: str) -> bytes:
        """PEM of the valid certificate of ``name``."""
        record = self._current(name)
        return self._read_span(self.layout.cert_pack(record.pack), record.cert_span, name)

    def private_key_pem(self, name: str) -> bytes:
        """Unencrypted PKCS#8 PEM. Treat as a secret: never log it or leave it in /tmp."""
        record = self._current(name)
        if record.key_span[1] == 0:
            raise KeyOnBoardError(
                f"{name!r} was re-keyed over the air: its key was made on the board and never "
                "left it, so iotfleet cannot put it in an image (revoke the device, e.g. "
                f"`iotfleet pki revoke {name} --reason superseded`, to issue a key to flash)"
            )
        return self._read_span(self.layout.key_pack(record.pack), record.key_span, name)

    # -- internals ---------------------------------------------------------------------------

    def _current(self, name: str) -> IndexRecord:
        record = self._load().current(name)
        if record is None:
            raise NotIssuedError(
                f"{name!r} has no valid certificate in {self.layout.root} "
                "(not reconciled yet, revoked, or not in the inventory)"
            )
        return record

    def _load(self) -> Index:
        stage = self._planned()
        if stage is not None and stage.has(self.layout.index_json):
            data = stage.read_bytes(self.layout.index_json)
            if self._staged is None or self._staged[0] is not data:
                self._staged = (data, load_index(self.layout, stage.read_bytes))
            return self._staged[1]
        try:
            info = self.layout.index_json.stat()
        except FileNotFoundError:
            raise StateError(
                f"no PKI index at {self.layout.index_json}: run a reconcile first"
            ) from None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._index is None or stamp != self._stamp:
            with fsio.state_lock(self.layout.lock, shared=True):
                self._index = load_index(self.layout)
            self._stamp = stamp
        return self._index

    def _read_span(self, path: Path, span: tuple[int, int], name: str) -> bytes:
        offset, length = span
        try:
            stage = self._planned()
            if stage is not None and stage.has(path):
                data = stage.read_bytes(path)[offset : offset + length]
            else:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(length)
        except FileNotFoundError:
            raise StateError(
                f"{path} (holding {name!r}) is missing; restore it from a backup "
                "or revoke the identity to have it re-issued"
            ) from None
        if (
            len(data) != length
            or not data.startswith(b"-----BEGIN ")
            or not data.rstrip().endswith(b"-----")
        ):
            raise IndexCorruptError(
                f"{path} does not hold a PEM block for {name!r} where the "
                "index says: the pack was edited or damaged"
            )
        return data

    def _read(self, path: Path) -> bytes:
        try:
            stage = self._planned()
            return stage.read_bytes(path) if stage is not None else path.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"{path} is missing (run a reconcile, or restore from backup)"
            ) from None
