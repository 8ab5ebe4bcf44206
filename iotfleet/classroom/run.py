"""What the ``iotfleet classroom`` commands do: create, bring up, reset a student, take down.

Bringing a class up is the teacher's one command: the lab (brokers + emulated boards for the
students without hardware), the real rollout (``pyinfra inventory/classroom.py deploy.py``),
the simulated gateways, the handouts and the compliance check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iotfleet.classroom.gateways import read_status, start_supervisor, stop_supervisor
from iotfleet.classroom.handouts import HandoutInputs, write_handouts
from iotfleet.classroom.inventory import classroom_fleet, lab_host_names, student_brokers
from iotfleet.classroom.roster import RosterEntry
from iotfleet.classroom.spec import TEACHER, ClassSpec, Shape, build_class
from iotfleet.classroom.store import (
    CLASS_ENV,
    ClassError,
    class_file,
    handouts_dir,
    load_class,
    save_class,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.credentials import password_slot
from iotfleet.lab.down import down
from iotfleet.lab.progress import Reporter
from iotfleet.lab.request import NamedGateway, UpRequest
from iotfleet.lab.up import up
from iotfleet.pki import revoke
from iotfleet.project import PROJECT_DIR, project_file

INVENTORY = "inventory/classroom.py"
Say = Callable[[str], None]


def project_root() -> Path:
    """Where pyinfra runs for a class: iotfleet's own deploy.py and inventory/ (installed
    with it, so a class needs no checkout)."""
    try:
        project_file("deploy.py")
        project_file(INVENTORY)
    except FileNotFoundError as exc:
        raise ClassError(str(exc)) from None
    return PROJECT_DIR


def create_class(
    name: str, roster: list[RosterEntry], *, seed: str | None, shape: Shape | None
) -> tuple[ClassSpec, bool]:
    """Make or update the class from ``roster``; True if class.json changed."""
    previous = load_class(name) if class_file(name).exists() else None
    chosen_shape: Shape = shape or (previous.shape if previous else "shared")
    spec = build_class(name, roster, seed=seed, shape=chosen_shape, previous=previous)
    return spec, save_class(spec)


def lab_request(spec: ClassSpec, suite: str) -> UpRequest:
    return UpRequest(
        name=spec.name,
        host_names=lab_host_names(spec),
        named_gateways=tuple(
            NamedGateway(s.device, s.board.mac)
            for s in spec.students
            if s.board.emulated and s.board.mac is not None
        ),
        suite=suite,
    )


def _env(spec: ClassSpec) -> dict[str, str]:
    return {**os.environ, CLASS_ENV: spec.name}


def rollout(spec: ClassSpec, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """The real ``pyinfra -y inventory/classroom.py deploy.py`` for this class."""
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    return subprocess.run(
        [pyinfra, "-y", INVENTORY, "deploy.py"],
        cwd=project_root(), env=_env(spec), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def compliance_check(spec: ClassSpec, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``iotfleet check inventory/classroom.py`` (reports under the class directory)."""
    reports = class_file(spec.name).parent / "reports"
    return subprocess.run(
        [sys.executable, "-m", "iotfleet", "check", INVENTORY, "--reports", str(reports)],
        cwd=project_root(), env=_env(spec), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def class_context(spec: ClassSpec) -> FleetContext:
    return FleetContext.for_fleet(classroom_fleet(spec))


def write_class_handouts(spec: ClassSpec) -> list[Path]:
    """Every student's page and the teacher overview, with today's brokers and passwords."""
    ctx = class_context(spec)
    all_brokers = [b.name for b in ctx.fleet.brokers]
    inputs = HandoutInputs(
        brokers_of={s.id: student_brokers(spec, s) or all_brokers for s in spec.students},
        all_brokers=all_brokers,
        ca_pem=ctx.pki.ca_chain_pem().decode(),
        passwords={
            user: ctx.passwords[user].get_secret_value()
            for user in [*(s.id for s in spec.students), TEACHER]
        },
    )
    return write_handouts(spec, inputs, handouts_dir(spec.name))


def wait_for_gateways(spec: ClassSpec, timeout: float) -> dict[str, bool]:
    """Wait until every emulated board's gateway is connected (or the deadline passes)."""
    wanted = {s.device for s in spec.students if s.board.emulated}
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(spec.name)
        connected = {d: status[d].connected if d in status else False for d in sorted(wanted)}
        if all(connected.values()) or time.monotonic() > deadline:
            return connected
        time.sleep(0.5)


@dataclass(frozen=True)
class UpResult:
    connected: dict[str, bool]
    check_returncode: int | None  # None: the compliance check was not run
    check_output: str
    handouts: Path
    seconds: float


def bring_up(
    spec: ClassSpec,
    *,
    suite: str,
    reporter: Reporter | None = None,
    say: Say = print,
    run_check: bool = True,
    connect_timeout: float = 120,
) -> UpResult:
    """Lab, rollout, gateways, handouts, compliance: the whole class, ready to teach."""
    started = time.monotonic()
    say(
        f"lab {spec.name}: {len(lab_host_names(spec))} broker host(s), "
        f"{sum(s.board.emulated for s in spec.students)} emulated board(s)"
    )
    up(lab_request(spec, suite), reporter)
    say(f"rollout: pyinfra -y {INVENTORY} deploy.py")
    result = rollout(spec)
    if result.returncode != 0:
        raise ClassError(f"the rollout failed:\n{(result.stdout + result.stderr)[-4000:]}")
    say("gateways: booting the simulated gateways from their flashed boards")
    start_supervisor(spec.name)
    connected = wait_for_gateways(spec, connect_timeout)
    pages = write_class_handouts(spec)
    say(f"handouts: {len(pages)} page(s) in {handouts_dir(spec.name)}")
    check_rc: int | None = None
    check_out = ""
    if run_check:
        say(f"compliance: iotfleet check {INVENTORY}")
        checked = compliance_check(spec)
        check_rc, check_out = checked.returncode, checked.stdout + checked.stderr
    return UpResult(
        connected, check_rc, check_out, handouts_dir(spec.name), time.monotonic() - started
    )


def reset_student(spec: ClassSpec, student_id: str, *, say: Say = print) -> None:
    """Cut the student's identities off and give them new ones: a revoked certificate for
    their gateway, a new password, the board re-flashed, the handout rewritten."""
    student = spec.student(student_id)
    ctx = class_context(spec)
    record = ctx.pki.record(student.device)
    if record is not None and record.status == "valid":
        revoke(ctx.pki_settings, student.device, "keyCompromise")
        say(f"revoked the certificate of {student.device} (serial {record.serial_hex})")
    ctx.secrets.forget(password_slot(student.id))
    say(f"new password for {student.id}; rolling out (new CRL, password file, re-flash)")
    result = rollout(spec)
    if result.returncode != 0:
        raise ClassError(f"the rollout failed:\n{(result.stdout + result.stderr)[-4000:]}")
    write_class_handouts(spec)
    say(f"handout rewritten: {handouts_dir(spec.name) / (student.id + '.html')}")


def take_down(spec_name: str, reporter: Reporter | None = None) -> bool:
    """Stop the gateways and remove the class's lab; the class and its PKI are kept."""
    stop_supervisor(spec_name)
    return down(spec_name, reporter)
