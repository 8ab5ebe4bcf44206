"""The seal: what iotfleet last wrote, so a run that finds it unchanged need not re-verify it.

Verifying index.json record by record (re-canonicalize, digest, check every field) costs
seconds at 100,000 devices, on every run. ``save_index`` therefore writes ``index.seal`` last:
the SHA-256 of index.json and index.txt as written, and of every pack file the index still
needs, authenticated with an HMAC-SHA256 under ``seal.key`` (32 random bytes, 0600, made once).

On load: if the seal's MAC is good and index.json and index.txt hash to what it records, the
index is what a verified write produced and is parsed without re-verification; the packs are
hashed (fast: a gigabyte a second) and each must still match the seal, so an edited or damaged
certificate or key pack is named. Anything else (no seal, a bad MAC, index.json or index.txt
changed by a hand, a disk or a crash between the writes) falls back to the full verification
of ``iotfleet.pki.index``, and a run that passes it writes a new seal.

Like the index digests, this detects accidents and well-meant edits; an attacker who can write
the state dir can read ``seal.key`` (and the leaf keys) too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from iotfleet.pki import fsio
from iotfleet.pki.errors import IndexCorruptError
from iotfleet.pki.layout import StateLayout

FORMAT = "iotfleet-pki-seal/1"
Reader = Callable[[Path], bytes]


@dataclass(frozen=True)
class Seal:
    """What the last write recorded: SHA-256 of index.json, index.txt and each pack by name."""

    index_json: str
    index_txt: str
    packs: dict[str, str]

    def covers(self, index_json: bytes, index_txt: bytes | None) -> bool:
        """True when both index files are byte for byte what was sealed."""
        return (
            index_txt is not None
            and hmac.compare_digest(self.index_json, _sha256(index_json))
            and hmac.compare_digest(self.index_txt, _sha256(index_txt))
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _body(index_json: str, index_txt: str, packs: dict[str, str]) -> str:
    doc = {"format": FORMAT, "index_json": index_json, "index_txt": index_txt, "packs": packs}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def read_seal(layout: StateLayout, read: Reader = Path.read_bytes) -> Seal | None:
    """The seal if present, well-formed and authentic under seal.key; else None."""
    try:
        key = read(layout.seal_key)
        doc = json.loads(read(layout.index_seal))
    except (OSError, ValueError):
        return None
    try:
        seal = Seal(str(doc["index_json"]), str(doc["index_txt"]), dict(doc["packs"]))
        mac = str(doc["mac"])
    except (KeyError, TypeError, ValueError):
        return None
    if doc.get("format") != FORMAT or len(key) != 32:
        return None
    expected = _mac(key, _body(seal.index_json, seal.index_txt, seal.packs))
    # As bytes: a damaged seal's text may hold anything (compare_digest refuses non-ASCII str).
    return seal if hmac.compare_digest(mac.encode(), expected.encode()) else None


# What a failed seal write means: it comes after the commit point (index.json).
_AFTER_COMMIT = (
    "index.json is committed (this run's changes are kept); its seal is rewritten by the next "
    "run, which verifies the index in full"
)


def write_seal(
    layout: StateLayout,
    index_json: bytes,
    index_txt: bytes,
    packs: Iterable[Path],
    read: Reader = Path.read_bytes,
) -> None:
    """Seal the index files just written and the packs (those present) the index needs."""
    try:
        key = read(layout.seal_key)
    except FileNotFoundError:
        key = b""
    if len(key) != 32:
        fsio.remove(layout.seal_key)
        key = secrets.token_bytes(32)
        fsio.create_exclusive_durable(layout.seal_key, key, fsio.KEY_MODE, not_done=_AFTER_COMMIT)
    hashes: dict[str, str] = {}
    for path in packs:
        try:
            hashes[path.name] = _sha256(read(path))
        except FileNotFoundError:
            continue  # a history pack gone: only valid records' packs are required
    body = _body(_sha256(index_json), _sha256(index_txt), hashes)
    doc = json.loads(body)
    doc["mac"] = _mac(key, body)
    fsio.atomic_write(
        layout.index_seal,
        (json.dumps(doc, sort_keys=True, indent=0) + "\n").encode(),
        fsio.KEY_MODE,
        not_done=_AFTER_COMMIT,
    )


def check_packs(layout: StateLayout, seal: Seal, read: Reader = Path.read_bytes) -> None:
    """Every sealed pack still present must hash to what was sealed.

    Raises:
        IndexCorruptError: naming the first pack that changed since iotfleet wrote it.
    """
    for name, digest in sorted(seal.packs.items()):
        path = layout.packs_dir / name
        try:
            data = read(path)
        except FileNotFoundError:
            continue  # needed ones are checked by the file scan (which names the records)
        if not hmac.compare_digest(_sha256(data), digest):
            raise IndexCorruptError(
                f"{path} changed since iotfleet wrote it (its SHA-256 is not the one sealed in "
                f"{layout.index_seal}): a certificate or key in it was edited or damaged; "
                "restore it from a backup, or revoke the identities in it to have them re-issued"
            )
