"""The index: every certificate the intermediate ever issued, and the CRL it last signed.

Two files, written together, never read by a person's edits:
- index.json (machine-readable, the truth): one record per line, each with a SHA-256 digest of
  its canonical form, plus a digest over all records, so a record edited, added, removed or
  reordered by hand (or by a disk) is detected and named;
- index.txt (for people, like easy-rsa's): status, not after, revoked at, reason, serial, kind,
  subject. It is a rendering of index.json and names the digest of the index.json it renders.
  If it renders an earlier index.json (a crash between the two writes), it is regenerated; if
  it differs otherwise, someone edited it expecting an effect (easy-rsa habit) and we say which
  line, instead of silently ignoring the edit.

The digests detect accidents and well-meant edits, not an attacker who can write the state
dir: such an attacker can already take the CA keys' ciphertext and the leaf keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from iotfleet.pki.errors import IndexCorruptError
from iotfleet.pki.layout import StateLayout, serial_hex
from iotfleet.pki.seal import Seal, read_seal
from iotfleet.pki.spec import KINDS, REVOCATION_REASONS, validate_name

FORMAT = "iotfleet-pki-index/1"
_RECORD_KEYS = frozenset(
    {
        "name",
        "kind",
        "serial",
        "subject",
        "key_type",
        "spec",
        "not_before",
        "not_after",
        "status",
        "reason",
        "revoked_at",
        "pack",
        "cert",
        "key",
        "digest",
    }
)
_PACK_RE = re.compile(r"[0-9A-Za-z-]{1,64}")
_TXT_HEADER = (
    "# iotfleet PKI index, generated from index.json. Do not edit: revoke with"
    " `iotfleet pki revoke NAME --reason R`.\n"
    "# status\tnot_after\trevoked_at\treason\tserial\tkind\tsubject\n"
)
_TXT_SOURCE = "# rendering of index.json digest "


@functools.lru_cache(maxsize=4096)  # a batch shares a handful of timestamps
def format_time(value: datetime) -> str:
    """UTC, second precision, Z suffix (also how index.txt shows times)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    """Inverse of format_time."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("time without time zone")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class IndexRecord:
    """One issued certificate: what `iotfleet pki status` and the roles need without parsing it."""

    name: str
    kind: str
    serial: int
    subject: str
    key_type: str
    spec: str  # fingerprint of the IdentitySpec it was issued for (see spec_fingerprint)
    not_before: datetime
    not_after: datetime
    # "retiring": renewed on the same key and still valid (not in the CRL) until the device is
    # seen using its successor or it expires; the name's current certificate is the newer one.
    status: Literal["valid", "retiring", "revoked"]
    reason: str | None = None
    revoked_at: datetime | None = None
    # Where the PEM lives: packs/<pack>.certs.pem / .keys.pem, (offset, length) of its block.
    pack: str = ""
    cert_span: tuple[int, int] = (0, 0)
    key_span: tuple[int, int] = (0, 0)

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)

    def revoke(self, reason: str, at: datetime) -> IndexRecord:
        """This record, revoked."""
        return replace(self, status="revoked", reason=reason, revoked_at=at)

    @property
    def usable(self) -> bool:
        """Valid or retiring: a TLS peer accepts it (it is in no CRL)."""
        return self.status != "revoked"


@dataclass(frozen=True)
class CrlInfo:
    """What the index remembers about a CRL it wrote (to detect a stale or foreign crl.pem)."""

    number: int
    next_update: datetime
    sha256: str


def _record_dict(record: IndexRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "kind": record.kind,
        "serial": record.serial_hex,
        "subject": record.subject,
        "key_type": record.key_type,
        "spec": record.spec,
        "not_before": format_time(record.not_before),
        "not_after": format_time(record.not_after),
        "status": record.status,
        "reason": record.reason,
        "revoked_at": format_time(record.revoked_at) if record.revoked_at else None,
        "pack": record.pack,
        "cert": list(record.cert_span),
        "key": list(record.key_span),
    }


def _canonical(data: dict[str, Any] | None) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# Strings json.dumps writes as they are (printable ASCII but the quote and the backslash).
_JSON_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def _canonical_record(record: IndexRecord) -> str:
    """``_canonical(_record_dict(record))``, formatted directly (json.dumps with sorted keys
    costs more than the rest of writing a record); a string that JSON would escape takes the
    json.dumps way."""
    revoked_at = format_time(record.revoked_at) if record.revoked_at else None
    not_before, not_after = format_time(record.not_before), format_time(record.not_after)
    strings = (
        record.key_type, record.kind, record.name, not_after, not_before, record.pack,
        record.reason or "", revoked_at or "", record.spec, record.status, record.subject,
    )  # fmt: skip
    if not all(isinstance(v, str) for v in strings) or not _JSON_PLAIN.fullmatch("".join(strings)):
        return _canonical(_record_dict(record))
    (c0, c1), (k0, k1) = record.cert_span, record.key_span
    reason = f'"{record.reason}"' if record.reason is not None else "null"
    revoked = f'"{revoked_at}"' if revoked_at is not None else "null"
    return (
        f'{{"cert":[{int(c0)},{int(c1)}],"key":[{int(k0)},{int(k1)}],'
        f'"key_type":"{record.key_type}","kind":"{record.kind}","name":"{record.name}",'
        f'"not_after":"{not_after}","not_before":"{not_before}","pack":"{record.pack}",'
        f'"reason":{reason},"revoked_at":{revoked},"serial":"{record.serial_hex}",'
        f'"spec":"{record.spec}","status":"{record.status}","subject":"{record.subject}"}}'
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_DIGEST_ATTR = "_iotfleet_digest"
_BODY_ATTR = "_iotfleet_body"


def prepare_record(record: IndexRecord) -> tuple[str, str]:
    """(canonical line, digest) of a record, computed once per record object (records are
    frozen: a revoked or retired record is a new object with its own). Computing it while the
    batch is being signed takes it off the serial end of a run."""
    body: str | None = record.__dict__.get(_BODY_ATTR)
    if body is None:
        body = _canonical_record(record)
        object.__setattr__(record, _BODY_ATTR, body)
    digest: str | None = record.__dict__.get(_DIGEST_ATTR)
    if digest is None:
        digest = _digest(body)
        object.__setattr__(record, _DIGEST_ATTR, digest)
    return body, digest


def _record_digest(record: IndexRecord) -> str:
    """The digest of a record's canonical line (see ``prepare_record``)."""
    cached: str | None = record.__dict__.get(_DIGEST_ATTR)
    return cached if cached is not None else prepare_record(record)[1]


def _crl_dict(info: CrlInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "number": info.number,
        "next_update": format_time(info.next_update),
        "sha256": info.sha256,
    }


def _top_digest(crl: str, root_crl: str, record_digests: Iterable[str]) -> str:
    hasher = hashlib.sha256(f"{FORMAT}\n{crl}\n{root_crl}\n".encode())
    for digest in record_digests:
        hasher.update(digest.encode())
    return hasher.hexdigest()


class Index:
    """All records in issuance order, plus CRL bookkeeping. Mutated in memory, saved as a whole."""

    def __init__(
        self,
        records: Sequence[IndexRecord] = (),
        crl: CrlInfo | None = None,
        root_crl: CrlInfo | None = None,
    ) -> None:
        self.records: list[IndexRecord] = list(records)
        self.crl = crl
        self.root_crl = root_crl
        # Loaded through a valid seal (iotfleet.pki.seal): the files are as last written.
        self.seal: Seal | None = None
        self._current: dict[str, int] = {}
        self._serials: set[int] = set()
        for position, record in enumerate(self.records):
            self._serials.add(record.serial)
            if record.status == "valid":
                self._current[record.name] = position

    def current(self, name: str) -> IndexRecord | None:
        """The valid certificate of ``name``, if any (at most one per name)."""
        position = self._current.get(name)
        return None if position is None else self.records[position]

    def current_names(self) -> list[str]:
        """Names with a valid certificate, in issuance order."""
        return [self.records[p].name for p in sorted(self._current.values())]

    def has_serial(self, serial: int) -> bool:
        return serial in self._serials

    def add(self, record: IndexRecord) -> None:
        """Append a newly issued certificate (the caller revoked the previous one first)."""
        if record.status == "valid" and record.name in self._current:
            raise ValueError(f"{record.name} already has a valid certificate")
        self.records.append(record)
        self._serials.add(record.serial)
        if record.status == "valid":
            self._current[record.name] = len(self.records) - 1

    def revoke(self, name: str, reason: str, at: datetime) -> IndexRecord:
        """Revoke the valid certificate of ``name``; return the revoked record."""
        position = self._current.pop(name)
        revoked = self.records[position].revoke(reason, at)
        self.records[position] = revoked
        return revoked

    def retire(self, name: str) -> IndexRecord:
        """Keep the valid certificate of ``name`` valid but no longer current (a same-key
        renewal is about to be added); return the retiring record."""
        position = self._current.pop(name)
        retiring = replace(self.records[position], status="retiring")
        self.records[position] = retiring
        return retiring

    def retiring(self, name: str | None = None) -> list[IndexRecord]:
        """Retiring records (of ``name``, or all), oldest first."""
        return [
            r for r in self.records if r.status == "retiring" and (name is None or r.name == name)
        ]

    def position_of(self, serial: int) -> int | None:
        """Where the record with ``serial`` is in issuance order."""
        return next((i for i, r in enumerate(self.records) if r.serial == serial), None)

    def revoke_serial(self, serial: int, reason: str, at: datetime) -> IndexRecord:
        """Revoke a retiring record by serial; return it revoked."""
        position = self.position_of(serial)
        assert position is not None and self.records[position].status == "retiring"
        revoked = self.records[position].revoke(reason, at)
        self.records[position] = revoked
        return revoked

    def revoked_records(self) -> list[IndexRecord]:
        return [r for r in self.records if r.status == "revoked"]

    # -- serialization -------------------------------------------------------------------

    def to_json(self) -> bytes:
        """index.json: one record per line, so a diff or an error points at a line."""
        crl = _canonical(_crl_dict(self.crl))
        root_crl = _canonical(_crl_dict(self.root_crl))
        lines: list[str] = []
        digests: list[str] = []
        for record in self.records:
            body, digest = prepare_record(record)
            digests.append(digest)
            # Key order inside a line does not matter: load_index re-canonicalizes without digest.
            lines.append(f'{body[:-1]},"digest":"{digest}"}}')
        parts = [
            f'{{"format":{json.dumps(FORMAT)},\n',
            f'"crl":{crl},\n',
            f'"root_crl":{root_crl},\n',
            '"records":[\n',
            ",\n".join(lines),
            "\n],\n" if lines else "],\n",
            f'"digest":"{_top_digest(crl, root_crl, digests)}"}}\n',
        ]
        return "".join(parts).encode()

    def digest(self) -> str:
        """The digest index.json carries over the CRL entries and every record."""
        return _top_digest(
            _canonical(_crl_dict(self.crl)),
            _canonical(_crl_dict(self.root_crl)),
            (_record_digest(r) for r in self.records),
        )

    def to_txt(self) -> bytes:
        """index.txt for people, naming the index.json it renders."""
        return self._txt(f"{_TXT_SOURCE}{self.digest()}\n")

    def _txt(self, source: str) -> bytes:
        out = [_TXT_HEADER, source]
        for r in self.records:
            out.append(
                "\t".join(
                    (
                        {"valid": "V", "retiring": "V"}.get(r.status, "R"),
                        format_time(r.not_after),
                        format_time(r.revoked_at) if r.revoked_at else "-",
                        r.reason or "-",
                        r.serial_hex,
                        r.kind,
                        r.subject,
                    )
                )
                + "\n"
            )
        return "".join(out).encode()


def _bad(where: str, problem: str) -> IndexCorruptError:
    return IndexCorruptError(
        f"{where}: {problem}. The index was edited by hand or is damaged; restore the state "
        "directory from a backup (see docs/pki.md) - the engine will not guess."
    )


def _parse_crl_info(data: object, where: str) -> CrlInfo | None:
    if data is None:
        return None
    try:
        assert isinstance(data, dict)
        return CrlInfo(
            number=int(data["number"]),
            next_update=parse_time(data["next_update"]),
            sha256=str(data["sha256"]),
        )
    except (AssertionError, KeyError, TypeError, ValueError):
        raise _bad(where, "malformed CRL entry") from None


def _span(value: object) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and v >= 0 for v in value)
    ):
        raise ValueError(f"bad file span {value!r}")
    return (value[0], value[1])


def _parse_record(raw: object, where: str) -> IndexRecord:
    if not isinstance(raw, dict) or set(raw) != _RECORD_KEYS:
        raise _bad(where, "not a record with the expected fields")
    try:
        record = IndexRecord(
            name=raw["name"],
            kind=raw["kind"],
            serial=int(raw["serial"], 16),
            subject=raw["subject"],
            key_type=raw["key_type"],
            spec=raw["spec"],
            not_before=parse_time(raw["not_before"]),
            not_after=parse_time(raw["not_after"]),
            status=raw["status"],
            reason=raw["reason"],
            revoked_at=parse_time(raw["revoked_at"]) if raw["revoked_at"] else None,
            pack=raw["pack"],
            cert_span=_span(raw["cert"]),
            key_span=_span(raw["key"]),
        )
    except (TypeError, ValueError) as exc:
        raise _bad(where, f"a field has the wrong type or format ({exc})") from None
    if not isinstance(record.pack, str) or not _PACK_RE.fullmatch(record.pack):
        raise _bad(where, f"invalid pack name {record.pack!r}")
    if validate_name(record.name) or record.kind not in KINDS:
        raise _bad(where, "invalid name or kind")
    if record.status in ("valid", "retiring") and (record.reason or record.revoked_at):
        raise _bad(where, "a valid record carries a revocation")
    if record.status == "revoked" and (
        record.reason not in REVOCATION_REASONS or record.revoked_at is None
    ):
        raise _bad(where, "a revoked record lacks a known reason or a revocation time")
    if record.status not in ("valid", "retiring", "revoked"):
        raise _bad(where, f"unknown status {record.status!r}")
    return record


# The last index verified in this process, by the exact bytes of index.json and index.txt: a
# run that reads the same state again (the reconcile, then the roles) verifies it once.
_verified: tuple[Path, bytes, bytes | None, Index] | None = None


def _read_txt(layout: StateLayout, read: Callable[[Path], bytes]) -> bytes | None:
    try:
        return read(layout.index_txt)
    except FileNotFoundError:
        return None


def load_index(layout: StateLayout, read: Callable[[Path], bytes] = Path.read_bytes) -> Index:
    """Read and verify index.json and index.txt; raise IndexCorruptError naming the bad record/line.

    A state dir without index.json yields an empty index (a new PKI). ``read``: how files are
    read (a planning run's stage reads what it will have written). Reading the same bytes again
    in this process returns a fresh copy of the index verified then (nothing is re-parsed).
    """
    global _verified
    path = layout.index_json
    try:
        data = read(path)
    except FileNotFoundError:
        return Index()
    txt = _read_txt(layout, read)
    if _verified is not None and _verified[:3] == (path, data, txt):
        known = _verified[3]
    else:
        seal = read_seal(layout, read)
        sealed: Index | None = None
        if seal is not None and seal.covers(data, txt):
            try:
                sealed = _sealed_index(path, data)
                sealed.seal = seal
            except IndexCorruptError:
                sealed = None  # sealed yet not what this release reads: verify it in full
        known = sealed if sealed is not None else _verify_index(layout, path, data, txt)
        _verified = (path, data, txt, known)
    index = Index(known.records, known.crl, known.root_crl)
    index.seal = known.seal
    return index


def _sealed_index(path: Path, data: bytes) -> Index:
    """index.json as a verified write produced it (the seal says so): parsed, not re-checked.

    Each record's dict from the JSON becomes the record's attributes (with the types of
    IndexRecord), which costs a third of building it field by field at 100,000 records.
    """
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError("another index format")
        records: list[IndexRecord] = []
        new, setattr_, append = object.__new__, object.__setattr__, records.append
        times: dict[str, datetime] = {}  # a batch shares a handful of timestamps
        for raw in doc["records"]:
            pop = raw.pop
            raw["serial"] = int(raw["serial"], 16)
            at = raw["not_before"]
            raw["not_before"] = times.get(at) or times.setdefault(at, parse_time(at))
            at = raw["not_after"]
            raw["not_after"] = times.get(at) or times.setdefault(at, parse_time(at))
            if raw["revoked_at"]:
                raw["revoked_at"] = parse_time(raw["revoked_at"])
            raw["cert_span"] = tuple(pop("cert"))
            raw["key_span"] = tuple(pop("key"))
            raw[_DIGEST_ATTR] = pop("digest")
            record = new(IndexRecord)
            setattr_(record, "__dict__", raw)
            append(record)
    except (KeyError, TypeError, ValueError):  # sealed yet unreadable: an iotfleet bug
        raise _bad(str(path), "sealed but not readable as an index") from None
    return Index(
        records,
        _parse_crl_info(doc.get("crl"), f"{path} crl"),
        _parse_crl_info(doc.get("root_crl"), f"{path} root_crl"),
    )


def _verify_index(layout: StateLayout, path: Path, data: bytes, txt: bytes | None) -> Index:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(str(path), "not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(
            f"{path} line {exc.lineno} column {exc.colno}", f"not valid JSON ({exc.msg})"
        ) from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or not isinstance(doc.get("records"), list)
    ):
        raise _bad(str(path), f"not an iotfleet index (expected format {FORMAT!r})")
    records: list[IndexRecord] = []
    digests: list[str] = []
    first_line = _first_record_line(text)
    valid_at: dict[str, int] = {}
    serials: set[int] = set()
    for position, raw in enumerate(doc["records"]):
        label = raw.get("name") if isinstance(raw, dict) else None
        where = f"{path} record #{position + 1} (line {first_line + position}, name {label!r})"
        if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
            raise _bad(where, "record without a digest")
        body = {k: v for k, v in raw.items() if k != "digest"}
        if _digest(_canonical(body)) != raw["digest"]:
            raise _bad(where, "record does not match its digest (a field was changed)")
        record = _parse_record(raw, where)
        if _record_dict(record) == body:  # renders to the line just verified: same digest
            object.__setattr__(record, _DIGEST_ATTR, raw["digest"])
        if record.serial in serials:
            raise _bad(where, f"serial {record.serial_hex} appears twice")
        serials.add(record.serial)
        if record.status == "valid":
            if record.name in valid_at:
                raise _bad(
                    where,
                    f"second valid certificate for {record.name!r} "
                    f"(first: record #{valid_at[record.name] + 1})",
                )
            valid_at[record.name] = position
        records.append(record)
        digests.append(raw["digest"])
    crl_text = _canonical(doc.get("crl"))
    root_crl_text = _canonical(doc.get("root_crl"))
    if doc.get("digest") != _top_digest(crl_text, root_crl_text, digests):
        raise _bad(
            str(path),
            "records were added, removed or reordered, or the CRL entry was "
            "changed (the index digest does not match)",
        )
    index = Index(
        records,
        _parse_crl_info(doc.get("crl"), f"{path} crl"),
        _parse_crl_info(doc.get("root_crl"), f"{path} root_crl"),
    )
    _check_txt(layout, index, txt)
    return index


def _first_record_line(text: str) -> int:
    marker = text.find('"records":[')
    return text.count("\n", 0, marker) + 2 if marker >= 0 else 0


def txt_is_current(layout: StateLayout, index: Index) -> bool:
    """Whether index.txt is the rendering of ``index`` (False: missing, or left by a crash
    between the writes of index.json and index.txt, or by an older iotfleet: regenerate it)."""
    try:
        return layout.index_txt.read_bytes() == index.to_txt()
    except FileNotFoundError:
        return False


def _check_txt(layout: StateLayout, index: Index, actual: bytes | None) -> None:
    """index.txt must be what index.json renders to, unless it renders an earlier index.json
    (missing or stale is fine: it is regenerated). Anything else is an edit by hand."""
    if actual is None:
        return
    expected = index.to_txt()
    if actual == expected:
        return
    source = next(
        (
            line
            for line in actual.decode(errors="replace").splitlines()
            if line.startswith(_TXT_SOURCE)
        ),
        None,
    )
    if source is not None and source != f"{_TXT_SOURCE}{index.digest()}":
        return  # the rendering of an earlier index.json: a crash between the two writes
    if source is None and actual == index._txt(""):
        return  # written by an iotfleet that did not name its source yet
    actual_lines = actual.decode(errors="replace").splitlines()
    expected_lines = expected.decode().splitlines()
    number = next(
        (
            n
            for n, (got, want) in enumerate(zip(actual_lines, expected_lines, strict=False), 1)
            if got != want
        ),
        min(len(actual_lines), len(expected_lines)) + 1,
    )
    raise IndexCorruptError(
        f"{layout.index_txt} line {number} differs from index.json: edited by hand? index.txt is "
        "a read-only view and editing it changes nothing. Revoke with `iotfleet pki revoke NAME "
        "--reason R`; if you did not edit it, delete index.txt and the next run regenerates it."
    )
