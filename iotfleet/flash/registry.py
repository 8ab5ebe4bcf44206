"""The flash registry: which device was flashed onto which board, with what, and how it went.

One SQLite file per fleet, under the fleet's state directory (never in the checkout), 0600.
It also holds the MAC each device is enrolled with: the hardware its identity is bound to.
Only what was observed on a board is recorded (see ``iotfleet.flash.engine``).

The database uses a rollback journal, not WAL: a reader then needs no new file and no space,
so a full disk makes a flash go unrecorded (one clear error) but never the registry unreadable.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from iotfleet.fs.errors import WriteError

Result = Literal["flashed", "unchanged", "failed", "refused"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enrollments (
    device_id   TEXT PRIMARY KEY,
    mac         TEXT NOT NULL UNIQUE,
    enrolled_at TEXT NOT NULL,
    station     TEXT NOT NULL,
    port        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flashes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              TEXT NOT NULL,
    station         TEXT NOT NULL,
    port            TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    mac             TEXT,
    firmware_sha256 TEXT,
    image_sha256    TEXT,
    cert_serial     TEXT,
    layout          TEXT,
    result          TEXT NOT NULL,
    provisioned     INTEGER NOT NULL,
    bytes_written   INTEGER NOT NULL DEFAULT 0,
    duration        REAL NOT NULL DEFAULT 0,
    message         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS flashes_device ON flashes (device_id, id);
"""
_COLUMNS = (
    "at", "station", "port", "device_id", "mac", "firmware_sha256", "image_sha256",
    "cert_serial", "layout", "result", "provisioned", "bytes_written", "duration", "message",
)  # fmt: skip


@dataclass(frozen=True)
class FlashRecord:
    """One attempt to flash one board."""

    station: str
    port: str
    device_id: str
    result: Result
    provisioned: bool  # the board now holds this device's current firmware and secrets
    mac: str | None = None
    firmware_sha256: str | None = None
    image_sha256: str | None = None
    cert_serial: str | None = None
    layout: str | None = None
    bytes_written: int = 0
    duration: float = 0.0
    message: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    mac: str
    enrolled_at: datetime
    station: str
    port: str


class FlashRegistry:
    """Read and append to the registry at ``path`` (created on first use).

    ``read_only``: a planning pass (``pyinfra --dry``, change detection) reads the registry and
    never creates or changes it; without a registry yet it reads as empty.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _db(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, one transaction per block (threads share it under a lock); reads
        take no write lock."""
        with self._lock:
            if self._conn is None:
                self._conn = _open_read_only(self.path) if self.read_only else _open(self.path)
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite ends it itself on some errors (disk full)
                    conn.execute("ROLLBACK")
                raise

    # -- enrollment ----------------------------------------------------------------------------

    def enrollment(self, device_id: str) -> Enrollment | None:
        with self._db() as db:
            row = db.execute(
                "SELECT device_id, mac, enrolled_at, station, port FROM enrollments "
                "WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        return None if row is None else _enrollment(row)

    def device_for_mac(self, mac: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT device_id FROM enrollments WHERE mac = ?", (mac,)).fetchone()
        return None if row is None else str(row[0])

    def enrollments(self) -> list[Enrollment]:
        with self._db() as db:
            rows = db.execute(
                "SELECT device_id, mac, enrolled_at, station, port FROM enrollments "
                "ORDER BY device_id"
            ).fetchall()
        return [_enrollment(row) for row in rows]

    # -- flash records -------------------------------------------------------------------------

    def record(self, entry: FlashRecord, *, enroll: bool = False) -> None:
        """Append ``entry``; with ``enroll``, bind its device to its MAC in the same transaction
        (a MAC enrolled for another device moves: re-enrollment was asked for).

        Raises:
            WriteError: the registry could not be written (disk full, permission denied,
                read-only): one line naming it; the registry is as it was.
        """
        try:
            self._record(entry, enroll)
        except sqlite3.Error as exc:
            raise _write_error(
                self.path,
                exc,
                f"the outcome for {entry.device_id} on "
                f"{entry.port} ({entry.result}) is not recorded",
            ) from None

    def _record(self, entry: FlashRecord, enroll: bool) -> None:
        with self._db(write=True) as db:
            values = [getattr(entry, name) for name in _COLUMNS]
            values[0] = entry.at.isoformat()
            values[10] = int(entry.provisioned)
            db.execute(
                f"INSERT INTO flashes ({', '.join(_COLUMNS)}) "  # noqa: S608 - fixed names
                f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )
            if enroll and entry.mac:
                db.execute(
                    "DELETE FROM enrollments WHERE mac = ? OR device_id = ?",
                    (entry.mac, entry.device_id),
                )
                db.execute(
                    "INSERT INTO enrollments VALUES (?, ?, ?, ?, ?)",
                    (entry.device_id, entry.mac, entry.at.isoformat(), entry.station, entry.port),
                )

    def history(self, device_id: str | None = None) -> list[FlashRecord]:
        """Every attempt, oldest first (of one device, or of all)."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM flashes"  # noqa: S608 - fixed names
        args: tuple[str, ...] = ()
        if device_id is not None:
            query += " WHERE device_id = ?"
            args = (device_id,)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [_record(row) for row in rows]

    def latest(self, device_id: str) -> FlashRecord | None:
        """The last attempt for ``device_id``: its board is provisioned if that one says so."""
        with self._db() as db:
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM flashes "  # noqa: S608 - fixed names
                "WHERE device_id = ? ORDER BY id DESC LIMIT 1",
                (device_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def is_provisioned(self, device_id: str) -> bool:
        last = self.latest(device_id)
        return last is not None and last.provisioned


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The registry opened so nothing can be written (an empty one if there is none yet)."""
    if not path.exists():
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.executescript(_SCHEMA)
        return conn
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                           check_same_thread=False)  # fmt: skip


def _open(path: Path) -> sqlite3.Connection:
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # Create it 0600 ourselves: sqlite would follow the umask.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            created = True
    except FileExistsError:
        pass  # a concurrent run created it
    except OSError as exc:
        raise WriteError(path, exc, "the flash registry was not created") from None
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "delete":
            # Earlier versions used WAL, whose readers need space for -wal/-shm files.
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        conn.close()
        if created:
            path.unlink(missing_ok=True)  # no empty registry left behind
        raise _write_error(path, exc, "the flash registry was not opened") from None
    return conn


def _write_error(path: Path, exc: sqlite3.Error, not_done: str) -> WriteError:
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    cause = OSError(errno.ENOSPC if full else errno.EIO, str(exc))
    return WriteError(path, cause, not_done)


def _enrollment(row: tuple[str, str, str, str, str]) -> Enrollment:
    return Enrollment(row[0], row[1], datetime.fromisoformat(row[2]), row[3], row[4])


def _record(row: tuple[object, ...]) -> FlashRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["at"] = datetime.fromisoformat(str(values["at"]))
    values["provisioned"] = bool(values["provisioned"])
    return FlashRecord(**values)  # type: ignore[arg-type]
