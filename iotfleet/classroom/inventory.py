"""A class as a pyinfra inventory: ``inventory/classroom.py`` + ``group_data/classroom.py``.

The class runs on the lab of the same name: its brokers are the lab's hosts, its emulated
boards the lab's gateways (named after the students' devices); real boards come from the
roster. The fleet data (devices, users, roles, listeners) is derived from ``class.json``.
"""

from __future__ import annotations

from typing import Any

from iotfleet.classroom.spec import TEACHER, TOPIC_ROOT, ClassSpec, Student
from iotfleet.classroom.store import current_class_name, load_class
from iotfleet.lab import naming as lab_naming
from iotfleet.lab.errors import LabError
from iotfleet.lab.inventory import lab_inventory_groups
from iotfleet.model import Fleet, RawHost, build_fleet

# Devices on 8883 with certificates; students and the teacher with passwords over TLS (8884)
# and from a browser over WebSockets (8443).
DEVICE_PORT, PASSWORD_PORT, WEBSOCKETS_PORT = 8883, 8884, 8443
SHARED_BROKER = "broker1"
LISTENERS: list[dict[str, Any]] = [
    {"port": DEVICE_PORT},
    {"port": PASSWORD_PORT, "auth": "password"},
    {"port": WEBSOCKETS_PORT, "protocol": "websockets", "auth": "password"},
]
ROLES: dict[str, dict[str, list[str]]] = {
    # %u is the student's own username: their namespace, nobody else's.
    "student": {"readwrite": [f"{TOPIC_ROOT}/%u/#"]},
    "teacher": {"read": [f"{TOPIC_ROOT}/#"], "write": [f"{TOPIC_ROOT}/+/gw/commands/#"]},
}


def device_prefix(student: Student) -> str:
    return f"{student.namespace}/gw"


def student_brokers(spec: ClassSpec, student: Student) -> list[str] | None:
    """The broker hosts a student and their gateway use: their own one per-student, else all."""
    if spec.shape == "per-student":
        return [lab_naming.fqdn(student.broker_host, spec.name)]
    return None


def lab_host_names(spec: ClassSpec) -> tuple[str, ...]:
    """The class lab's hosts: one shared broker, or one broker per student."""
    if spec.shape == "per-student":
        return tuple(s.broker_host for s in spec.students)
    return (SHARED_BROKER,)


def _only_on(brokers: list[str] | None) -> dict[str, Any]:
    return {} if brokers is None else {"brokers": brokers}


def classroom_fleet_data(spec: ClassSpec) -> dict[str, Any]:
    """The fleet-wide inventory keys of the class (what group_data/classroom.py exports)."""
    return {
        "fleet_name": spec.name,
        "fleet_topic_root": TOPIC_ROOT,
        "fleet_devices": [
            {
                "id": s.device,
                "group": s.id,
                "topic_prefix": device_prefix(s),
                **({"mac": s.board.mac} if s.board.mac else {}),
                **_only_on(student_brokers(spec, s)),
            }
            for s in spec.students
        ],
        "fleet_clients": [
            *(
                {
                    "name": s.id,
                    "roles": ["student"],
                    "auth": "password",
                    "password": "generated",
                    **_only_on(student_brokers(spec, s)),
                }
                for s in spec.students
            ),
            {"name": TEACHER, "roles": ["teacher"], "auth": "password", "password": "generated"},
        ],
        "fleet_roles": ROLES,
        "mosquitto_listeners": LISTENERS,
        "pki_passphrase_generated": True,
        "espgw_wifi_ssid": f"{spec.name}-iot",
        "espgw_wifi_passphrase": "generated",
    }


def classroom_inventory_groups(
    class_name: str | None = None,
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``brokers`` (the class lab's hosts) and ``flash_stations`` (where each board is plugged)."""
    spec = load_class(current_class_name(class_name))
    try:
        lab = lab_inventory_groups(spec.name)
    except LabError as exc:
        hint = f"bring the class up: `iotfleet classroom up --name {spec.name}`"
        raise LabError(f"{exc} ({hint})") from None
    # Each lab board stays on the station the lab lists it under (@local, or the lab host it
    # is attached to); boards from the roster are plugged into this machine.
    lab_boards = {
        board["device"]: (station, data, board)
        for station, data in lab.get("flash_stations", [])
        for board in data["espgw_boards"]
    }
    boards: dict[str, list[dict[str, Any]]] = {}
    station_data: dict[str, dict[str, Any]] = {}
    for student in spec.students:
        if student.board.port is not None:
            boards.setdefault("@local", []).append(
                {"port": student.board.port, "device": student.device,
                 **({"mac": student.board.mac} if student.board.mac else {})}
            )  # fmt: skip
        elif student.device in lab_boards:
            station, data, board = lab_boards[student.device]
            boards.setdefault(station, []).append({**board, "mac": student.board.mac})
            station_data[station] = {k: v for k, v in data.items() if k != "espgw_boards"}
    groups = {"brokers": lab["brokers"]}
    if boards:
        groups["flash_stations"] = [
            (station, {**station_data.get(station, {}), "espgw_boards": listed})
            for station, listed in boards.items()
        ]
    return groups


def classroom_fleet(spec: ClassSpec) -> Fleet:
    """The class's validated fleet, built as pyinfra would from inventory/classroom.py."""
    groups = classroom_inventory_groups(spec.name)
    data = classroom_fleet_data(spec)
    hosts = [
        RawHost(name, (group, "classroom"), {**data, **host_data})
        for group, members in groups.items()
        for name, host_data in members
    ]
    return build_fleet(hosts)
