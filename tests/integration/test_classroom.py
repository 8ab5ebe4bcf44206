"""A 30-student class from a roster, brought up on the lab with one command (issue 7)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.check.mqtt_probe import (
    NOT_AUTHORIZED,
    Identity,
    Target,
    session,
    succeeded,
    try_connect,
)
from iotfleet.classroom.gateways import read_status
from iotfleet.classroom.inventory import PASSWORD_PORT
from iotfleet.classroom.run import class_context
from iotfleet.classroom.spec import ClassSpec
from iotfleet.classroom.store import class_dir, class_file, handouts_dir, load_class
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.paths import fleet_dir
from iotfleet.gateway import read_bundle
from iotfleet.lab.inventory import lab_inventory_groups
from tests.integration.conftest import require_root
from tests.support.rollout import run_iotfleet

pytestmark = [pytest.mark.lab, pytest.mark.slow]

STUDENTS = 30
NAME = f"{os.environ.get('IOTFLEET_ITEST_PREFIX', 'itest')}-class"


def roster_text(count: int) -> str:
    rows = ["name,email,id"]
    rows.append("Zoë O'Brien,zoe@example.edu,")  # the id is derived: zoe-obrien
    rows += [f"Student Number {i},s{i}@example.edu,s{i:02d}" for i in range(2, count + 1)]
    return "\n".join(rows) + "\n"


@dataclass
class RunningClass:
    spec: ClassSpec
    roster: Path
    up_output: str

    @property
    def ctx(self) -> FleetContext:
        return class_context(load_class(self.spec.name))

    @property
    def broker(self) -> str:
        return self.ctx.fleet.brokers[0].name

    def password_target(self) -> Target:
        return Target(self.broker, PASSWORD_PORT, self.ctx.pki.ca_chain_pem())

    def login(self, user: str) -> Identity:
        return Identity(username=user, password=self.ctx.passwords[user].get_secret_value())

    def flash_file(self, device: str) -> Path:
        groups = lab_inventory_groups(self.spec.name)
        boards = [b for _, d in groups["flash_stations"] for b in d["espgw_boards"]]
        return Path(next(str(b["flash_file"]) for b in boards if b["device"] == device))


def _forget_class() -> None:
    run_iotfleet("classroom", "down", "--name", NAME, timeout=300)
    shutil.rmtree(class_dir(NAME), ignore_errors=True)
    shutil.rmtree(fleet_dir(NAME), ignore_errors=True)


@pytest.fixture(scope="module")
def running_class(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningClass]:
    require_root()
    _forget_class()
    roster = tmp_path_factory.mktemp("class") / "roster.csv"
    roster.write_text(roster_text(STUDENTS))
    try:
        made = run_iotfleet("classroom", "new", str(roster), "--name", NAME, "--seed", "itest")
        assert made.returncode == 0, made.stderr
        up = run_iotfleet("classroom", "up", "--name", NAME, timeout=1800)
        assert up.returncode == 0, up.stdout + up.stderr
        yield RunningClass(load_class(NAME), roster, up.stdout + up.stderr)
    finally:
        _forget_class()


def test_every_gateway_connects_and_the_teacher_reads_all(running_class: RunningClass) -> None:
    status = read_status(NAME)
    assert len(status) == STUDENTS
    assert all(state.connected for state in status.values()), status
    # The compliance check logs in as iotfleet's probes, never as a student's gateway.
    assert all(state.connects == 1 for state in status.values()), status
    devices = {s.device for s in running_class.spec.students}
    with session(running_class.password_target(), running_class.login("teacher")) as teacher:
        teacher.subscribe("class/#")
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != devices:
            seen = {m.topic.split("/")[1] + "-gw" for m in teacher.messages("class/")}
            time.sleep(0.2)
    assert seen == devices, sorted(devices - seen)


def test_a_student_cannot_touch_another_students_namespace(running_class: RunningClass) -> None:
    target = running_class.password_target()
    with session(target, running_class.login("zoe-obrien")) as zoe:
        assert succeeded(zoe.publish("class/zoe-obrien/notes", b"mine"))
        assert zoe.publish("class/s02/notes", b"not mine") == NOT_AUTHORIZED
        assert zoe.publish("class/s02/gw/commands/restart", b"x") == NOT_AUTHORIZED
        zoe.subscribe("class/s02/#")
        zoe.subscribe("#")
        assert zoe.wait_for_message("class/zoe-obrien/gw/telemetry/", timeout=15)
        foreign = [m.topic for m in zoe.messages() if not m.topic.startswith("class/zoe-obrien/")]
        assert foreign == []
    wrong = Identity(
        username="s02", password=running_class.ctx.passwords["zoe-obrien"].get_secret_value()
    )
    assert not try_connect(target, wrong).accepted


def test_the_compliance_check_ran_and_passed(running_class: RunningClass) -> None:
    assert "compliance: iotfleet check inventory/classroom.py" in running_class.up_output
    assert (class_dir(NAME) / "reports").is_dir()


def test_regenerating_the_class_gives_identical_files(running_class: RunningClass) -> None:
    before = class_file(NAME).read_bytes()
    pages = {p.name: p.read_bytes() for p in handouts_dir(NAME).glob("*.html")}
    again = run_iotfleet(
        "classroom", "new", str(running_class.roster), "--name", NAME, "--seed", "itest"
    )
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    rewritten = run_iotfleet("classroom", "handouts", "--name", NAME)
    assert rewritten.returncode == 0, rewritten.stderr
    assert class_file(NAME).read_bytes() == before
    assert {p.name: p.read_bytes() for p in handouts_dir(NAME).glob("*.html")} == pages
    assert len(pages) == STUDENTS + 1


def test_resetting_a_student_cuts_off_the_old_identity(running_class: RunningClass) -> None:
    student = running_class.spec.student("s05")
    target = running_class.password_target()
    old_login = running_class.login(student.id)
    old_bundle = read_bundle(running_class.flash_file(student.device))
    device_target = Target(running_class.broker, 8883, running_class.ctx.pki.ca_chain_pem())
    old_device = Identity(old_bundle.certificate_pem, old_bundle.private_key_pem)
    assert try_connect(device_target, old_device).accepted

    reset = run_iotfleet("classroom", "reset", student.id, "--name", NAME, timeout=900)
    assert reset.returncode == 0, reset.stdout + reset.stderr

    assert not try_connect(target, old_login).accepted
    assert not try_connect(device_target, old_device).accepted
    new_login = running_class.login(student.id)
    assert new_login.password != old_login.password
    assert try_connect(target, new_login).accepted
    page = (handouts_dir(NAME) / f"{student.id}.html").read_text()
    assert str(new_login.password) in page and str(old_login.password) not in page
    new_bundle = read_bundle(running_class.flash_file(student.device))
    assert new_bundle.certificate_pem != old_bundle.certificate_pem
    # The student's gateway reboots from its re-flashed board and connects with the new identity.
    flashed = hashlib.sha256(running_class.flash_file(student.device).read_bytes()).hexdigest()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = read_status(NAME).get(student.device)
        if state is not None and state.flash_sha256 == flashed and state.connected:
            break
        time.sleep(0.5)
    assert state is not None and state.flash_sha256 == flashed and state.connected, state


PER_STUDENT = f"{os.environ.get('IOTFLEET_ITEST_PREFIX', 'itest')}-pclass"


def test_per_student_shape_gives_each_student_a_broker_of_their_own(
    tmp_path: Path,
) -> None:
    require_root()
    roster = tmp_path / "roster.csv"
    roster.write_text("name,id\nAda,ada\nBen,ben\n")
    try:
        made = run_iotfleet(
            "classroom", "new", str(roster), "--name", PER_STUDENT, "--shape", "per-student"
        )
        assert made.returncode == 0, made.stderr
        up = run_iotfleet("classroom", "up", "--name", PER_STUDENT, "--no-check", timeout=1800)
        assert up.returncode == 0, up.stdout + up.stderr
        spec = load_class(PER_STUDENT)
        ctx = class_context(spec)
        brokers = {b.name.split(".")[0]: b.name for b in ctx.fleet.brokers}
        assert set(brokers) == {"ada-broker", "ben-broker"}
        assert all(state.connected for state in read_status(PER_STUDENT).values())
        ada = Identity(username="ada", password=ctx.passwords["ada"].get_secret_value())
        own = Target(brokers["ada-broker"], PASSWORD_PORT, ctx.pki.ca_chain_pem())
        other = Target(brokers["ben-broker"], PASSWORD_PORT, ctx.pki.ca_chain_pem())
        assert try_connect(own, ada).accepted
        assert not try_connect(other, ada).accepted
        # Ada's gateway was flashed to use her broker only.
        groups = lab_inventory_groups(PER_STUDENT)
        boards = [b for _, d in groups["flash_stations"] for b in d["espgw_boards"]]
        flash = next(Path(str(b["flash_file"])) for b in boards if b["device"] == "ada-gw")
        assert read_bundle(flash).config.mqtt_hosts == [brokers["ada-broker"]]
    finally:
        run_iotfleet("classroom", "down", "--name", PER_STUDENT, timeout=300)
        shutil.rmtree(class_dir(PER_STUDENT), ignore_errors=True)
        shutil.rmtree(fleet_dir(PER_STUDENT), ignore_errors=True)
