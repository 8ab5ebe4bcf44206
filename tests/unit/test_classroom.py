"""Classroom engine: roster -> class -> fleet data and handouts, deterministic and isolated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotfleet.classroom import inventory as classroom_inventory
from iotfleet.classroom.handouts import HandoutInputs, student_page, teacher_page, write_handouts
from iotfleet.classroom.inventory import classroom_fleet_data
from iotfleet.classroom.roster import RosterError, numbered_roster, parse_roster, slug
from iotfleet.classroom.spec import build_class, emulated_mac
from iotfleet.classroom.store import class_json, load_class, save_class
from iotfleet.model import RawHost, build_fleet
from iotfleet.mosquitto.acl import acl_rules

ROSTER = """name,email,id,board_port,board_mac
Alice Martin,alice@example.edu,,,
Zoë O'Brien,zoe@example.edu,,/dev/ttyUSB3,18-FE-34-AA-BB-CC
Bob,bob@example.edu,bob2,,
"""


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_roster_columns_slugs_and_boards() -> None:
    entries = parse_roster(ROSTER)
    assert [e.student_id for e in entries] == ["alice-martin", "zoe-obrien", "bob2"]
    assert entries[1].board_port == "/dev/ttyUSB3"
    assert entries[1].board_mac == "18:fe:34:aa:bb:cc"
    assert slug("  Jean-Luc   Picard ") == "jean-luc-picard"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id\nx\n", "line 1: no 'name' column"),
        ("name\nAnn\nann\n", "line 3: student id 'ann' is already used on line 2"),
        ("name,board_mac\nAnn,zz\n", "line 2: column 'board_mac'"),
        ("name,board_mac\nAnn,18:fe:34:00:00:01\n", "'board_mac' is set but 'board_port' is empty"),
        ("name,id\nAnn,teacher\n", "reserved for the teacher's account"),
        ("name,id\nAnn,Has Space\n", "line 2: column id"),
        ("name\n???\n", "no usable id derived"),
        ("name\n\n", "no students in the roster"),
    ],
)
def test_bad_rosters_name_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(RosterError) as caught:
        parse_roster(text, "class.csv")
    assert str(caught.value).startswith("class.csv: ")
    assert expected in str(caught.value)


def test_numbered_roster() -> None:
    assert [e.student_id for e in numbered_roster(3)] == ["student01", "student02", "student03"]


def test_same_roster_and_seed_give_the_same_bytes() -> None:
    first = build_class("eg254s", parse_roster(ROSTER), seed="autumn")
    again = build_class("eg254s", parse_roster(ROSTER), seed="autumn")
    assert class_json(first) == class_json(again)
    assert save_class(first) is True
    assert save_class(again) is False  # nothing rewritten
    assert load_class("eg254s") == first
    other_seed = build_class("eg254s", parse_roster(ROSTER), seed="spring")
    assert class_json(other_seed) != class_json(first)


def test_adding_a_student_changes_only_that_student() -> None:
    before = build_class("eg254s", parse_roster(ROSTER), seed="s")
    after = build_class("eg254s", parse_roster(ROSTER + "Carol,c@x,,,\n"), seed="s")
    assert after.students[:3] == before.students
    old, new = classroom_fleet_data(before), classroom_fleet_data(after)
    added = [d for d in new["fleet_devices"] if d not in old["fleet_devices"]]
    assert added == [
        {
            "id": "carol-gw",
            "group": "carol",
            "topic_prefix": "class/carol/gw",
            "mac": emulated_mac("s", "carol-gw"),
        }
    ]
    assert {k: v for k, v in new.items() if k not in ("fleet_devices", "fleet_clients")} == {
        k: v for k, v in old.items() if k not in ("fleet_devices", "fleet_clients")
    }


def test_students_are_isolated_and_the_teacher_reads_all() -> None:
    spec = build_class("eg254s", parse_roster(ROSTER), seed="s")
    data = classroom_fleet_data(spec)
    fleet = build_fleet([RawHost("broker1", ("brokers",), {"ssh_hostname": "10.0.0.2", **data})])
    rules = acl_rules(fleet, "broker1")
    assert rules["alice-martin"] == [
        ("readwrite", "class/alice-martin/#"),
        ("deny", "iotfleet/pki/#"),
    ]
    assert rules["alice-martin-gw"] == [
        ("write", "class/alice-martin/gw/telemetry/#"),
        ("write", "class/alice-martin/gw/status"),
        ("read", "class/alice-martin/gw/commands/#"),
        ("read", "iotfleet/pki/alice-martin-gw/certificate"),
        ("read", "iotfleet/pki/alice-martin-gw/rekey"),
        ("write", "iotfleet/pki/alice-martin-gw/csr"),
    ]
    assert ("read", "class/#") in rules["teacher"]
    assert fleet.device("zoe-obrien-gw").mac == "18:fe:34:aa:bb:cc"


def _inputs(spec_ids: list[str]) -> HandoutInputs:
    return HandoutInputs(
        brokers_of={i: ["broker1.eg254s.iotfleet.test"] for i in spec_ids},
        all_brokers=["broker1.eg254s.iotfleet.test"],
        ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        passwords={**{i: f"pw-of-{i}-0123456789" for i in spec_ids}, "teacher": "pw-teacher-0123"},
    )


def test_handouts_hold_only_their_owners_credentials(tmp_path: Path) -> None:
    roster = ROSTER + "<script>alert(1)</script> Eve,e@x,eve,,\n"
    spec = build_class("eg254s", parse_roster(roster), seed="s")
    inputs = _inputs([s.id for s in spec.students])
    alice = student_page(spec, spec.student("alice-martin"), inputs)
    assert "pw-of-alice-martin-0123456789" in alice
    assert "class/alice-martin/#" in alice and "class/alice-martin/gw/commands/ping" in alice
    assert not any(f"pw-of-{s.id}" in alice for s in spec.students if s.id != "alice-martin")
    assert "pw-teacher" not in alice
    overview = teacher_page(spec, inputs)
    assert "pw-teacher-0123" in overview and "pw-of-" not in overview
    assert "<script>alert" not in overview and "&lt;script&gt;" in overview
    paths = write_handouts(spec, inputs, tmp_path / "handouts")
    assert {p.name for p in paths} == {*(f"{s.id}.html" for s in spec.students), "index.html"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    assert (tmp_path / "handouts").stat().st_mode & 0o777 == 0o700
    smaller = build_class("eg254s", parse_roster(ROSTER), seed="s")
    write_handouts(smaller, inputs, tmp_path / "handouts")
    assert not (tmp_path / "handouts" / "eve.html").exists()


def test_class_json_is_plain_sorted_json() -> None:
    spec = build_class("eg254s", numbered_roster(2), seed="s")
    text = class_json(spec).decode()
    assert json.loads(text)["students"][0]["id"] == "student01"
    assert text.endswith("}\n")


def test_lab_boards_stay_on_their_station_roster_boards_are_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = build_class("eg254s", parse_roster(ROSTER), seed="s")
    save_class(spec)
    alice, zoe, bob = (s.device for s in spec.students)
    station = "broker1.eg254s.iotfleet.test"
    lab = {
        "brokers": [(station, {"ssh_hostname": "10.213.0.11"})],
        "flash_stations": [
            ("@local", {"espgw_boards": [{"port": "socket://127.0.0.1:4001", "device": alice}]}),
            (station, {"ssh_hostname": "10.213.0.11",
                       "espgw_boards": [{"port": "/dev/ttyUSB0", "device": bob}]}),
        ],
    }  # fmt: skip
    monkeypatch.setattr(classroom_inventory, "lab_inventory_groups", lambda name: lab)
    groups = classroom_inventory.classroom_inventory_groups("eg254s")
    stations = {name: data for name, data in groups["flash_stations"]}
    assert [b["device"] for b in stations["@local"]["espgw_boards"]] == [alice, zoe]
    assert stations["@local"]["espgw_boards"][1]["port"] == "/dev/ttyUSB3"  # from the roster
    assert stations[station]["ssh_hostname"] == "10.213.0.11"
    assert [(b["device"], b["port"]) for b in stations[station]["espgw_boards"]] == [
        (bob, "/dev/ttyUSB0")
    ]
