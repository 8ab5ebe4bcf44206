"""Printable handouts: one page per student (their credentials only) and a teacher overview."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from iotfleet.classroom.inventory import PASSWORD_PORT, WEBSOCKETS_PORT, device_prefix
from iotfleet.classroom.spec import TEACHER, TOPIC_ROOT, ClassSpec, Student
from iotfleet.fs.atomic import write_file_atomically

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class HandoutInputs:
    """What the pages need beyond the class: where the brokers are, the CA, passwords."""

    brokers_of: dict[str, list[str]]  # student id -> broker names that student uses
    all_brokers: list[str]
    ca_pem: str
    passwords: dict[str, str]  # username -> password (students and the teacher)


def student_page(spec: ClassSpec, student: Student, inputs: HandoutInputs) -> str:
    return _TEMPLATES.get_template("student.html.j2").render(
        class_name=spec.name,
        student=student,
        brokers=inputs.brokers_of[student.id],
        password=inputs.passwords[student.id],
        namespace=student.namespace,
        device_prefix=device_prefix(student),
        password_port=PASSWORD_PORT,
        websockets_port=WEBSOCKETS_PORT,
        ca_pem=inputs.ca_pem,
    )


def teacher_page(spec: ClassSpec, inputs: HandoutInputs) -> str:
    rows = [
        {
            "name": s.name,
            "id": s.id,
            "namespace": s.namespace,
            "device": s.device,
            "board": f"{s.board.port}" if s.board.port else "emulated",
            "broker": ", ".join(inputs.brokers_of[s.id]),
        }
        for s in spec.students
    ]
    return _TEMPLATES.get_template("teacher.html.j2").render(
        class_name=spec.name,
        shape=spec.shape,
        students=spec.students,
        rows=rows,
        brokers=inputs.all_brokers,
        teacher=TEACHER,
        password=inputs.passwords[TEACHER],
        password_port=PASSWORD_PORT,
        topic_root=TOPIC_ROOT,
        ca_pem=inputs.ca_pem,
    )


def write_handouts(spec: ClassSpec, inputs: HandoutInputs, directory: Path) -> list[Path]:
    """Write every page (0600, directory 0700); remove pages of students who left."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    written = []
    wanted = {f"{s.id}.html" for s in spec.students} | {"index.html"}
    for student in spec.students:
        path = directory / f"{student.id}.html"
        _write_if_changed(path, student_page(spec, student, inputs))
        written.append(path)
    index = directory / "index.html"
    _write_if_changed(index, teacher_page(spec, inputs))
    written.append(index)
    for stale in directory.glob("*.html"):
        if stale.name not in wanted:
            stale.unlink()
    return written


def _write_if_changed(path: Path, text: str) -> None:
    data = text.encode()
    if not (path.exists() and path.read_bytes() == data):
        write_file_atomically(path, data, mode=0o600)
