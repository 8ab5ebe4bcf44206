"""The class as iotfleet keeps it (``class.json``): students, their devices and boards.

Everything here is non-secret and a pure function of the roster, the class seed and the
class's own history (a student keeps what they were given when others join or leave), so the
same roster and seed give the same file, byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iotfleet.classroom.roster import RosterEntry, check_student_id
from iotfleet.model.names import check_dns_name, check_mac

FORMAT = 1
Shape = Literal["shared", "per-student"]
ESPRESSIF_OUI = (0x18, 0xFE, 0x34)
TOPIC_ROOT = "class"
TEACHER = "teacher"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Board(_Model):
    """An ESP8266 board: real (port from the roster) or emulated by the lab (port None).

    A real board without a MAC in the roster is bound to its device at the first flash.
    """

    mac: str | None
    port: str | None = None

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        return None if value is None else check_mac(value)

    @property
    def emulated(self) -> bool:
        return self.port is None


class Student(_Model):
    id: str
    name: str
    board: Board

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_student_id(value)

    @property
    def device(self) -> str:
        """The student's gateway: its MQTT client id, certificate CN and lab board name."""
        return f"{self.id}-gw"

    @property
    def namespace(self) -> str:
        """Topics the student (and only the student, and the teacher) may use."""
        return f"{TOPIC_ROOT}/{self.id}"

    @property
    def broker_host(self) -> str:
        """Lab host name of the student's own broker (per-student shape)."""
        return f"{self.id}-broker"


class ClassSpec(_Model):
    format: int = FORMAT
    name: str = Field(description="class name: fleet name and lab name")
    seed: str = Field(description="makes emulated boards' MACs reproducible")
    shape: Shape = "shared"
    students: list[Student]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        checked = check_dns_name(value)
        if "." in checked or len(checked) > 20:
            raise ValueError(f"{value!r}: a class name is one DNS label of at most 20 characters")
        return checked

    def student(self, student_id: str) -> Student:
        for student in self.students:
            if student.id == student_id:
                return student
        known = ", ".join(s.id for s in self.students[:10])
        raise KeyError(f"no student {student_id!r} in class {self.name} (e.g. {known})")


def emulated_mac(seed: str, device: str) -> str:
    """A stable, Espressif-looking MAC for an emulated board of ``device`` in a class seeded so."""
    digest = hashlib.sha256(f"iotfleet-class/{seed}/{device}".encode()).digest()
    return ":".join(f"{octet:02x}" for octet in (*ESPRESSIF_OUI, *digest[:3]))


def build_class(
    name: str,
    roster: list[RosterEntry],
    *,
    seed: str | None = None,
    shape: Shape = "shared",
    previous: ClassSpec | None = None,
) -> ClassSpec:
    """The class for ``roster``, students in roster order.

    Everything a student gets is derived from their own roster line and the seed alone, so
    adding or removing a student changes nothing for the others. ``previous`` supplies the
    seed when none is given (a class keeps its seed).
    """
    seed = seed if seed is not None else (previous.seed if previous else name)
    students = []
    for entry in roster:
        device = f"{entry.student_id}-gw"
        if entry.board_port is not None:
            board = Board(mac=entry.board_mac, port=entry.board_port)
        else:
            board = Board(mac=emulated_mac(seed, device))
        students.append(Student(id=entry.student_id, name=entry.name, board=board))
    return ClassSpec(name=name, seed=seed, shape=shape, students=students)
