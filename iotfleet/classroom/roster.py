"""Read a class roster (CSV) into students, every problem named by line and column.

Columns (header row required, names case-insensitive): ``name`` (required), ``id`` (the
student's login and MQTT username; default: derived from the name), ``board_port`` and
``board_mac`` for a student who brings a real ESP8266 board. Other columns are ignored, so a
school's export (with e-mail addresses and the like) can be used as it is.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from iotfleet.model.names import check_identity_name, check_mac

MAX_STUDENTS = 500
STUDENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class RosterError(ValueError):
    """The roster cannot be used; the message lists every problem with its line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class RosterEntry:
    """One student as the roster gives them."""

    student_id: str
    name: str
    board_port: str | None = None
    board_mac: str | None = None


def slug(name: str) -> str:
    """``Zoë  O'Brien`` -> ``zoe-obrien``: ASCII letters, digits and single dashes."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_name.lower().replace("'", ""))
    return "-".join(words)[:31].strip("-")


RESERVED_IDS = frozenset({"teacher"})


def check_student_id(value: str) -> str:
    if value in RESERVED_IDS:
        raise ValueError(f"{value!r} is reserved for the teacher's account")
    if not STUDENT_ID_RE.match(value):
        raise ValueError(
            f"{value!r} is not a usable student id: 1-31 characters a-z 0-9 -, starting with a "
            "letter or digit (it becomes a login, a topic level and part of certificate names)"
        )
    check_identity_name(f"{value}-gw")
    return value


def read_roster(path: Path) -> list[RosterEntry]:
    """Students of a CSV roster, in file order; raises ``RosterError`` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(str(path), [f"cannot read it: {exc}"]) from None
    return parse_roster(text, str(path))


def parse_roster(text: str, source: str = "roster") -> list[RosterEntry]:
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise RosterError(source, ["line 1: a header row with at least a 'name' column is needed"])
    header = [cell.strip().lower() for cell in rows[0]]
    if "name" not in header:
        raise RosterError(source, [f"line 1: no 'name' column (found: {', '.join(header)})"])
    column = {title: index for index, title in enumerate(header)}
    problems: list[str] = []
    entries: list[RosterEntry] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        entry = _entry(row, column, line, problems)
        if entry is None:
            continue
        if entry.student_id in seen:
            problems.append(
                f"line {line}: student id {entry.student_id!r} is already used on line "
                f"{seen[entry.student_id]}; give one of them an explicit 'id'"
            )
            continue
        seen[entry.student_id] = line
        entries.append(entry)
    if not entries and not problems:
        problems.append("no students in the roster")
    if len(entries) > MAX_STUDENTS:
        problems.append(f"{len(entries)} students: at most {MAX_STUDENTS} per class")
    if problems:
        raise RosterError(source, problems)
    return entries


def _cell(row: list[str], column: dict[str, int], title: str) -> str:
    index = column.get(title)
    return row[index].strip() if index is not None and index < len(row) else ""


def _entry(
    row: list[str], column: dict[str, int], line: int, problems: list[str]
) -> RosterEntry | None:
    name = _cell(row, column, "name")
    if not name:
        problems.append(f"line {line}: column 'name' is empty")
        return None
    student_id = _cell(row, column, "id") or slug(name)
    try:
        check_student_id(student_id)
    except ValueError as exc:
        which = "id" if _cell(row, column, "id") else "name (no usable id derived; add an 'id')"
        problems.append(f"line {line}: column {which}: {exc}")
        return None
    port = _cell(row, column, "board_port") or None
    mac_text = _cell(row, column, "board_mac") or None
    mac = None
    if mac_text is not None:
        try:
            mac = check_mac(mac_text)
        except ValueError as exc:
            problems.append(f"line {line}: column 'board_mac': {exc}")
            return None
    if mac is not None and port is None:
        problems.append(f"line {line}: column 'board_mac' is set but 'board_port' is empty")
        return None
    return RosterEntry(student_id, name, port, mac)


def numbered_roster(count: int) -> list[RosterEntry]:
    """``--students N``: student01 .. studentNN."""
    if not 1 <= count <= MAX_STUDENTS:
        raise RosterError("--students", [f"{count}: give 1..{MAX_STUDENTS} students"])
    width = max(2, len(str(count)))
    return [RosterEntry(f"student{i:0{width}d}", f"Student {i}") for i in range(1, count + 1)]
