"""The inventory model: what a user writes, what is accepted, and how errors read."""

from __future__ import annotations

from typing import Any

import pytest

from iotfleet.model import InventoryError, RawHost, build_fleet


def broker(name: str = "mqtt1.example.net", **data: Any) -> RawHost:
    return RawHost(name, ("brokers",), {"fleet_name": "demo", "ssh_hostname": "192.0.2.10", **data})


def problems_of(*hosts: RawHost) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        build_fleet(list(hosts))
    return [str(p) for p in caught.value.problems]


def test_minimal_inventory_gets_secure_defaults() -> None:
    fleet = build_fleet([broker(fleet_devices=[{"id": "gw-1"}])])
    (listener,) = fleet.brokers[0].mosquitto.listeners
    assert (listener.port, listener.tls, listener.auth) == (8883, True, "certificate")
    assert fleet.brokers[0].mosquitto.tls_version == "tlsv1.2"
    assert fleet.topic_prefix(fleet.devices[0]) == "devices/gw-1"
    assert fleet.roles["dashboard"].read == ["devices/+/telemetry/#", "devices/+/status"]


def test_unknown_key_is_named_with_a_suggestion() -> None:
    assert problems_of(broker(mosquitto_listners=[])) == [
        "host mqtt1.example.net: mosquitto_listners: unknown key "
        "(did you mean mosquitto_listeners?)"
    ]


@pytest.mark.parametrize(
    ("listeners", "expected"),
    [
        ([{"port": 70000}], "mosquitto_listeners[0].port: Input should be less than or equal"),
        ([{"port": 1883, "tls": False}], "plain MQTT is only allowed with bind_address"),
        ([{"port": 8883}, {"port": 8883}], "port 8883 is used by two listeners"),
        ([{"port": 883}], "mosquitto_listeners[0].port: 883 is below 1024"),
        (
            [{"port": 8883}, {"port": 443, "protocol": "websockets", "auth": "password"}],
            "mosquitto_listeners[1].port: 443 is below 1024: the sandboxed broker",
        ),
        (
            [{"port": 1883, "tls": False, "bind_address": "127.0.0.1", "auth": "password"}],
            "every broker needs at least one TLS listener with protocol mqtt",
        ),
        (
            [{"port": 8883}, {"port": 8443, "protocol": "websockets"}],
            "Mosquitto does not check the CRL there",
        ),
        (
            [{"port": 8443, "protocol": "websockets", "auth": "password"}],
            "every broker needs at least one TLS listener with protocol mqtt",
        ),
        (
            [{"port": 8883}, {"port": 1883, "tls": False, "bind_address": "127.0.0.1"}],
            "has no TLS, so it cannot check client certificates: set auth: password",
        ),
    ],
)
def test_bad_listeners_are_refused_naming_host_and_key(listeners: Any, expected: str) -> None:
    problems = problems_of(broker(mosquitto_listeners=listeners))
    host_problems = [p for p in problems if p.startswith("host mqtt1.example.net: ")]
    assert any(expected in p for p in host_problems), problems


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("mqtt.example.net", "'mqtt.example.net' is not an IP address: write one of the host's"),
        ("10.0.0.300", "'10.0.0.300' is not an IP address"),
        ("224.0.0.1", "224.0.0.1 is a multicast address"),
        ("ff02::1", "ff02::1 is a multicast address"),
        ("255.255.255.255", "255.255.255.255 is the broadcast address"),
        ("240.0.0.7", "240.0.0.7 is reserved (240.0.0.0/4)"),
        ("fe80::1%eth0", "fe80::1%eth0 names an interface: write the address without %eth0"),
    ],
)
def test_a_bind_address_no_host_can_have_is_refused(address: str, expected: str) -> None:
    problems = problems_of(broker(mosquitto_listeners=[{"port": 8883, "bind_address": address}]))
    (problem,) = problems  # one message, naming the host, the key and the address
    assert problem.startswith(
        f"host mqtt1.example.net: mosquitto_listeners[0].bind_address: {expected}"
    ), problem


@pytest.mark.parametrize("address", ["192.0.2.77", "127.0.0.2", "::1", "0.0.0.0", "::"])
def test_a_bind_address_that_may_be_the_hosts_is_left_to_the_apply(address: str) -> None:
    fleet = build_fleet([broker(mosquitto_listeners=[{"port": 8883, "bind_address": address}])])
    assert fleet.brokers[0].mosquitto.listeners[0].bind_address == address


@pytest.mark.parametrize(
    ("written", "canonical"),
    [("::0", "::"), ("0:0:0:0:0:0:0:0", "::"), ("2001:DB8:0::0010", "2001:db8::10")],
)
def test_a_bind_address_is_kept_in_one_spelling(written: str, canonical: str) -> None:
    """The apply script and the checks compare strings: ``::0`` must read as the wildcard."""
    fleet = build_fleet([broker(mosquitto_listeners=[{"port": 8883, "bind_address": written}])])
    assert fleet.brokers[0].mosquitto.listeners[0].bind_address == canonical


def test_listener_on_the_ssh_port_is_refused() -> None:
    problems = problems_of(broker(ssh_port=2222, mosquitto_listeners=[{"port": 2222}]))
    assert "host mqtt1.example.net: mosquitto_listeners[0].port: 2222 is the SSH port" in problems


def test_plain_listener_on_loopback_is_allowed_with_passwords() -> None:
    fleet = build_fleet(
        [
            broker(
                mosquitto_listeners=[
                    {"port": 8883},
                    {"port": 1883, "tls": False, "bind_address": "127.0.0.1", "auth": "password"},
                ]
            )
        ]
    )
    assert len(fleet.brokers[0].mosquitto.listeners) == 2


def test_weak_ciphers_are_refused() -> None:
    problems = problems_of(broker(mosquitto_ciphers="AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256"))
    assert any("weak ciphers not allowed: AES128-SHA" in p for p in problems)


def test_device_ids_must_be_safe_mqtt_identities() -> None:
    problems = problems_of(broker(fleet_devices=[{"id": "gw/1"}, {"id": "a b"}, {"id": "ok"}]))
    assert [p.split(":")[0] for p in problems] == ["device gw/1", "device a b"]


def test_duplicate_names_across_kinds_are_refused() -> None:
    problems = problems_of(
        broker(fleet_devices=[{"id": "gw-1"}, {"id": "gw-1"}], fleet_clients=[{"name": "gw-1"}])
    )
    assert problems == ["gw-1: name: used 3 times across brokers, devices and clients"]


def test_reserved_prefix_is_refused() -> None:
    problems = problems_of(broker(fleet_clients=[{"name": "iotfleet-health-x"}]))
    assert "reserved" in problems[0]


def test_clear_text_password_is_refused_without_echoing_it() -> None:
    problems = problems_of(
        broker(fleet_clients=[{"name": "dash", "auth": "password", "password": "hunter2hunter2"}])
    )
    assert problems and "hunter2" not in "".join(problems)
    assert "never written in the inventory in clear" in problems[0]


def test_device_role_that_opens_every_device_is_refused() -> None:
    problems = problems_of(
        broker(
            fleet_roles={"spy": {"read": ["#"]}, "fine": {"read": ["firmware/announcements"]}},
            fleet_devices=[{"id": "gw-1", "roles": ["spy"]}, {"id": "gw-2", "roles": ["fine"]}],
        )
    )
    assert len(problems) == 1 and problems[0].startswith("device gw-1: roles: role 'spy'")


def test_unknown_roles_and_bad_topic_filters_are_refused() -> None:
    problems = problems_of(
        broker(
            fleet_roles={"bad": {"read": ["a/#/b"]}},
            fleet_clients=[{"name": "dash", "roles": ["nope"]}],
        )
    )
    assert "role bad: read: 'a/#/b': '#' must be a whole level and the last one" in problems
    assert any(p == "client dash: roles: unknown role 'nope'" for p in problems)


def test_fleet_wide_keys_must_agree_between_hosts() -> None:
    problems = problems_of(
        broker("a.example.net"),
        broker("b.example.net", fleet_name="other", ssh_hostname="192.0.2.11"),
    )
    assert problems == [
        "host b.example.net: fleet_name: differs from host a.example.net: fleet-wide keys must "
        "be set once (group_data/all.py or the inventory's own group)"
    ]


def test_missing_fleet_name_is_named() -> None:
    host = RawHost("b", ("brokers",), {})
    assert problems_of(host) == ["inventory: fleet_name: required: a short name such as 'plant-a'"]


@pytest.mark.parametrize("name", ["@local", "../../etc", "plant a", "plant.a", "-x"])
def test_a_fleet_name_the_state_dir_or_pki_would_refuse_is_named(name: str) -> None:
    host = RawHost("b", ("brokers",), {"fleet_name": name, "ssh_hostname": "192.0.2.1"})
    [problem] = problems_of(host)
    assert problem.startswith(f"inventory: fleet_name: {name!r} is not a fleet name"), problem


def test_boards_must_name_known_devices_and_matching_macs() -> None:
    station = RawHost(
        "@local",
        ("flash_stations",),
        {
            "fleet_name": "demo",
            "espgw_wifi_ssid": "plant",
            "espgw_wifi_passphrase": "env:WIFI",
            "espgw_boards": [
                {"port": "socket://127.0.0.1:5000", "device": "ghost"},
                {"port": "/dev/ttyUSB0", "device": "gw-1", "mac": "18:FE:34:00:00:02"},
            ],
        },
    )
    problems = problems_of(
        broker(fleet_devices=[{"id": "gw-1", "mac": "18:fe:34:00:00:01"}]), station
    )
    assert problems == [
        "host @local: espgw_boards[0].device: 'ghost' is not in fleet_devices",
        "host @local: espgw_boards[1].mac: 18:fe:34:00:00:02 differs from device gw-1's mac "
        "18:fe:34:00:00:01",
    ]


def test_boards_without_wifi_settings_are_refused() -> None:
    station = RawHost(
        "@local",
        ("flash_stations",),
        {"fleet_name": "demo", "espgw_boards": [{"port": "/dev/ttyUSB0", "device": "gw-1"}]},
    )
    problems = problems_of(broker(fleet_devices=[{"id": "gw-1"}]), station)
    assert problems == [
        "host @local: espgw_wifi_ssid: required when boards are listed",
        "host @local: espgw_wifi_passphrase: required when boards are listed",
    ]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        broker(
            mosquitto_max_connections=0,
            firewall_ssh_sources=["not-a-net"],
            fleet_devices=[{"id": "gw/1"}],
            pki_renew_before_days=0,
        )
    )
    assert len(problems) == 4


def test_boards_of_a_remote_station_may_be_its_device_paths_or_network_ports() -> None:
    def station(*ports: str) -> RawHost:
        return RawHost(
            "flash1.example.net",
            ("flash_stations",),
            {
                "fleet_name": "demo",
                "fleet_devices": [{"id": f"gw-{i}"} for i in range(len(ports))],
                "espgw_wifi_ssid": "plant",
                "espgw_wifi_passphrase": "generated",
                "espgw_boards": [
                    {"port": port, "device": f"gw-{i}"} for i, port in enumerate(ports)
                ],
            },
        )

    good = station("/dev/ttyUSB0", "rfc2217://flash1.example.net:4000", "socket://127.0.0.1:9")
    fleet = build_fleet([broker(), good])
    assert [b.port for b in fleet.stations[0].boards] == [
        "/dev/ttyUSB0",
        "rfc2217://flash1.example.net:4000",
        "socket://127.0.0.1:9",
    ]
    bad = problems_of(broker(), station("ttyUSB0", "http://flash1:80", "/dev/tty USB1"))
    assert [p for p in bad if ".port" in p] == [
        "host flash1.example.net: espgw_boards[0].port: 'ttyUSB0' is neither a device path "
        "of the station (/dev/ttyUSB0) nor a network serial port (socket://, rfc2217://)",
        "host flash1.example.net: espgw_boards[1].port: 'http://flash1:80': a network serial "
        "port is socket://HOST:PORT or rfc2217://HOST:PORT",
        "host flash1.example.net: espgw_boards[2].port: '/dev/tty USB1' is neither a device "
        "path of the station (/dev/ttyUSB0) nor a network serial port (socket://, rfc2217://)",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"mosquito_persistence": False},
            "mosquito_persistence: unknown key (did you mean mosquitto_persistence?)",
        ),
        (
            {"firewal_enabled": False},
            "firewal_enabled: unknown key (did you mean firewall_enabled?)",
        ),
        ({"flet_devices": []}, "flet_devices: unknown key (did you mean fleet_devices?)"),
        ({"mosquitto_persistence": "no"}, "mosquitto_persistence: must be True or False, not 'no'"),
        ({"firewall_enabled": 0}, "firewall_enabled: must be True or False, not 0"),
        (
            {"mosquitto_listeners": [{"port": 8883, "tls": "yes"}]},
            "mosquitto_listeners[0].tls: must be True or False, not 'yes'",
        ),
    ],
)
def test_near_miss_keys_and_loose_booleans_are_refused(data: dict[str, Any], expected: str) -> None:
    assert problems_of(broker(**data)) == [f"host mqtt1.example.net: {expected}"]


def test_keys_of_others_are_left_alone() -> None:
    fleet = build_fleet([broker(ssh_user="root", lab_slot=3, my_own_setting="x")])
    assert fleet.brokers[0].name == "mqtt1.example.net"


def test_misspelt_group_is_refused() -> None:
    host = RawHost("mqtt1.example.net", ("broker",), {"fleet_name": "demo"})
    assert problems_of(host) == ["group broker: name: unknown group (did you mean brokers?)"]


def test_same_machine_listed_twice_is_refused() -> None:
    assert problems_of(broker("mqtt1"), broker("mqtt1-again")) == [
        "host mqtt1-again: ssh_hostname: 192.0.2.10:22 is also host mqtt1: list each machine once"
    ]


def test_two_devices_with_one_mac_in_any_case_are_refused() -> None:
    devices = [
        {"id": "gw-1", "mac": "18:FE:34:AA:BB:CC"},
        {"id": "gw-2", "mac": "18-fe-34-aa-bb-cc"},
    ]
    assert problems_of(broker(fleet_devices=devices)) == [
        "devices gw-1, gw-2: mac: 18:fe:34:aa:bb:cc is given to 2 devices"
    ]


def test_a_problem_every_host_shares_is_listed_once() -> None:
    hosts = [
        broker(f"mqtt{i}", ssh_hostname=f"192.0.2.{i}", mosquito_persistence=False)
        for i in range(1, 6)
    ]
    assert problems_of(*hosts) == [
        "hosts mqtt1, mqtt2, mqtt3 and 2 more: mosquito_persistence: unknown key "
        "(did you mean mosquitto_persistence?)"
    ]
