"""The compliance suite's readers and judges of what it sees on a broker (no hosts needed).

Inputs are what real Debian brokers print (captured from lab hosts) and the configuration
and ACL the mosquitto role renders, so a correct broker passes and each deviation is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iotfleet.check.access_checks import (
    acl_problems,
    identities_file_problems,
    password_file_problems,
)
from iotfleet.check.broker_config_checks import (
    acl_config_problems,
    anonymous_problems,
    authentication_problems,
    crl_config_problems,
    limit_problems,
    plugin_problems,
    tls_config_problems,
)
from iotfleet.check.file_checks import expected_files, file_problems
from iotfleet.check.host_facts import (
    FileStat,
    PackageState,
    parse_exposure,
    parse_package,
    parse_show,
    parse_ss,
    parse_stat,
)
from iotfleet.check.listener_checks import (
    configured_listener_problems,
    plain_listener_problems,
    socket_problems,
)
from iotfleet.check.mqtt_checks import Grants, topic_matches
from iotfleet.check.service_checks import (
    memory_problems,
    package_problems,
    sandbox_problems,
    service_problems,
    user_problems,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.model import Broker, Fleet, RawHost, build_fleet
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import acl_file, broker_identities, render_acl
from iotfleet.mosquitto.conf import include_dirs, parse_config
from iotfleet.mosquitto.logins import password_users
from iotfleet.roles.mosquitto.render import BrokerConfig

HOST = "mqtt1.example.net"
LISTENERS = [
    {"port": 8883},
    {"port": 8884, "auth": "password"},
    {"port": 8885, "auth": "certificate+password"},
    {"port": 8443, "protocol": "websockets", "auth": "password"},
    {"port": 1883, "bind_address": "127.0.0.1", "tls": False, "auth": "password"},
]

SS = """\
LISTEN 0      100    0.0.0.0:8885 0.0.0.0:* users:(("mosquitto",pid=407,fd=8))
LISTEN 0      100    0.0.0.0:8884 0.0.0.0:* users:(("mosquitto",pid=407,fd=6))
LISTEN 0      100    0.0.0.0:8883 0.0.0.0:* users:(("mosquitto",pid=407,fd=4))
LISTEN 0      100    0.0.0.0:8443 0.0.0.0:* users:(("mosquitto",pid=407,fd=10))
LISTEN 0      100  127.0.0.1:1883 0.0.0.0:* users:(("mosquitto",pid=407,fd=11))
LISTEN 0      128    0.0.0.0:22   0.0.0.0:* users:(("sshd",pid=33,fd=3))
LISTEN 0      100       [::]:8885    [::]:* users:(("mosquitto",pid=407,fd=9))
LISTEN 0      100       [::]:8884    [::]:* users:(("mosquitto",pid=407,fd=7))
LISTEN 0      100       [::]:8883    [::]:* users:(("mosquitto",pid=407,fd=5))
LISTEN 0      128       [::]:22      [::]:* users:(("sshd",pid=33,fd=4))
"""

SHOW = f"""\
User=mosquitto
DropInPaths={layout.DROPIN}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
CapabilityBoundingSet=
AmbientCapabilities=
MainPID=407
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    mp = pytest.MonkeyPatch()
    mp.setenv("IOTFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    built = build_fleet(
        [
            RawHost(
                HOST,
                ("brokers",),
                {
                    "fleet_name": "unit",
                    "ssh_hostname": "192.0.2.10",
                    "mosquitto_listeners": LISTENERS,
                    "fleet_devices": [{"id": "gw-1"}, {"id": "gw-2"}],
                    "fleet_clients": [
                        {"name": "ops", "roles": ["admin"]},
                        {
                            "name": "wallboard",
                            "roles": ["dashboard"],
                            "auth": "password",
                            "password": "generated",
                        },
                    ],
                },
            )
        ]
    )
    FleetContext.for_fleet(built)  # resolves the generated password once
    yield built
    mp.undo()


@pytest.fixture
def broker(fleet: Fleet) -> Broker:
    return fleet.brokers[0]


@pytest.fixture
def config_text(fleet: Fleet, broker: Broker) -> str:
    return BrokerConfig(broker, fleet).text()


def _listener(broker: Broker, port: int) -> Any:
    return next(lst for lst in broker.mosquitto.listeners if lst.port == port)


# -- mosquitto.conf -------------------------------------------------------------------------------


def test_the_rendered_configuration_passes_every_configuration_check(
    broker: Broker, config_text: str
) -> None:
    config = parse_config(config_text)
    assert config.per_listener_settings
    assert [lst.port for lst in config.listeners] == [8883, 8884, 8885, 8443, 1883]
    assert configured_listener_problems(HOST, broker, config) == []
    assert plain_listener_problems(HOST, config, parse_ss(SS)) == []
    for listener in broker.mosquitto.listeners:
        assert anonymous_problems(HOST, listener, config) == []
        assert authentication_problems(HOST, listener, config) == []
        assert tls_config_problems(HOST, broker, listener, config) == []
        assert crl_config_problems(HOST, listener, config) == []
        assert acl_config_problems(HOST, listener, config) == []


def _edit(config_text: str, port: int, old: str, new: str) -> str:
    head, *blocks = config_text.split("\nlistener ")
    changed = [b.replace(old, new) if b.split()[0] == str(port) else b for b in blocks]
    assert changed != blocks
    return "\nlistener ".join([head, *changed])


def test_each_weakened_listener_setting_is_named(broker: Broker, config_text: str) -> None:
    anonymous = parse_config(
        _edit(config_text, 8884, "allow_anonymous false", "allow_anonymous true")
    )
    assert anonymous_problems(HOST, _listener(broker, 8884), anonymous) == [
        f"anonymous clients are allowed on {HOST}:8884 (allow_anonymous true)"
    ]
    optional = parse_config(
        _edit(config_text, 8883, "require_certificate true", "require_certificate false")
    )
    assert authentication_problems(HOST, _listener(broker, 8883), optional)[0].startswith(
        f"client certificates are not required on {HOST}:8883"
    )
    no_passwords = parse_config(
        _edit(config_text, 8884, f"password_file {layout.password_file(8884)}\n", "")
    )
    assert authentication_problems(HOST, _listener(broker, 8884), no_passwords) == [
        f"passwords are not checked on {HOST}:8884 (password_file is not set, expected "
        f"{layout.password_file(8884)})"
    ]
    old_tls = parse_config(_edit(config_text, 8885, "tls_version tlsv1.2", "tls_version tlsv1.1"))
    assert tls_config_problems(HOST, broker, _listener(broker, 8885), old_tls) == [
        f"TLS versions on {HOST}:8885: tls_version is tlsv1.1, expected tlsv1.2"
    ]
    cbc = parse_config(_edit(config_text, 8883, "ciphers ECDHE", "ciphers AES128-SHA:ECDHE"))
    assert tls_config_problems(HOST, broker, _listener(broker, 8883), cbc) == [
        f"ciphers on {HOST}:8883 adds AES128-SHA; expected the inventory's list"
    ]
    no_crl = parse_config(_edit(config_text, 8885, f"crlfile {layout.CRL}\n", ""))
    assert crl_config_problems(HOST, _listener(broker, 8885), no_crl) == [
        f"no CRL on {HOST}:8885 (crlfile is not set, expected {layout.CRL}): revoked "
        "certificates are accepted"
    ]
    no_acl = parse_config(_edit(config_text, 8443, f"acl_file {layout.ACL_FILE}\n", ""))
    assert acl_config_problems(HOST, _listener(broker, 8443), no_acl)[0].startswith(
        f"no ACL on {HOST}:8443"
    )


def test_an_extra_plain_listener_is_named(broker: Broker, config_text: str) -> None:
    config = parse_config(config_text + "\nlistener 1884 0.0.0.0\nallow_anonymous true\n")
    sockets = parse_ss(
        SS + 'LISTEN 0 100 0.0.0.0:1884 0.0.0.0:* users:(("mosquitto",pid=407,fd=12))\n'
    )
    assert plain_listener_problems(HOST, config, sockets) == [
        f"plain MQTT (no TLS) on 0.0.0.0:1884 on {HOST}: credentials and messages travel in "
        "clear text"
    ]
    assert socket_problems(HOST, broker, sockets) == [
        f"Mosquitto listens on 0.0.0.0:1884 on {HOST}, which the inventory does not list"
    ]
    assert configured_listener_problems(HOST, broker, config) == [
        f"the configuration on {HOST} has a listener on 0.0.0.0:1884 that the inventory does "
        "not list"
    ]
    assert anonymous_problems(HOST, _listener(broker, 8883), config) == []


def test_global_security_settings_without_per_listener_settings() -> None:
    config = parse_config(
        "per_listener_settings false\nlistener 8883\ncertfile /c\nallow_anonymous true\n"
        "listener 8884\ncertfile /c\n"
    )
    second = config.listener(8884)
    assert second is not None and config.effective(second, "allow_anonymous") == "true"


def test_include_dir_and_default_listeners() -> None:
    main = "listener 8883\ncertfile /c\ninclude_dir /etc/mosquitto/conf.d\n"
    assert include_dirs(main) == ["/etc/mosquitto/conf.d"]
    config = parse_config(main, {"/etc/mosquitto/conf.d/zz.conf": "listener 1883\n"})
    assert [(lst.port, lst.tls) for lst in config.listeners] == [(8883, True), (1883, False)]
    assert config.includes == ["/etc/mosquitto/conf.d/zz.conf"]
    # Mosquitto 2 with no listener at all: local only, on 1883.
    assert [(lst.port, lst.loopback) for lst in parse_config("").listeners] == [(1883, True)]
    legacy = parse_config("port 1883\n")
    assert legacy.listeners[0].port == 1883 and not legacy.listeners[0].loopback


# -- sockets, files, package, service, sandbox ----------------------------------------------------


def test_sockets(broker: Broker) -> None:
    sockets = parse_ss(SS)
    assert sockets[0].where == "0.0.0.0:8885" and sockets[0].processes == (("mosquitto", 407),)
    assert parse_ss(SS)[6].where == "[::]:8885"
    assert socket_problems(HOST, broker, sockets) == []
    missing = parse_ss("\n".join(line for line in SS.splitlines() if ":8443" not in line))
    assert socket_problems(HOST, broker, missing) == [
        f"Mosquitto does not listen on port 8443 on {HOST} (in the inventory)"
    ]
    moved = parse_ss(SS.replace("127.0.0.1:1883", "0.0.0.0:1883"))
    assert socket_problems(HOST, broker, moved) == [
        f"Mosquitto listens on 0.0.0.0:1883 on {HOST}; the inventory binds port 1883 to 127.0.0.1"
    ]


def test_file_modes(fleet: Fleet, broker: Broker) -> None:
    stats = parse_stat(
        f"regular file|root|mosquitto|640|{layout.SERVER_KEY}\n"
        f"directory|root|mosquitto|755|{layout.CERT_DIR}\n"
    )
    key = next(f for f in expected_files(fleet, broker) if f.path == layout.SERVER_KEY)
    assert file_problems(HOST, key, stats[layout.SERVER_KEY]) == []
    assert file_problems(HOST, key, FileStat("regular file", "root", "mosquitto", "644")) == [
        f"{layout.SERVER_KEY} on {HOST} is 0644 root:mosquitto, expected 0640 root:mosquitto "
        "(readable by every local user)"
    ]
    certs = layout.CERT_DIR_FILE
    assert file_problems(HOST, certs, stats[layout.CERT_DIR])[0].startswith(
        f"{layout.CERT_DIR} on {HOST} is 0755 root:mosquitto, expected 0750"
    )
    assert file_problems(HOST, key, None) == [
        f"{layout.SERVER_KEY} (broker private key) is missing on {HOST}"
    ]
    assert layout.password_file(8884) in {f.path for f in expected_files(fleet, broker)}


def test_package(broker: Broker) -> None:
    installed = parse_package("install ok installed|2.0.11-1.2+deb12u2")
    assert installed == PackageState("install ok installed", "2.0.11-1.2+deb12u2")
    assert package_problems(HOST, broker, installed) == []
    held = PackageState("hold ok installed", "2.0.11-1.2+deb12u2")
    assert (
        "is on hold: security updates will not be installed"
        in package_problems(HOST, broker, held)[0]
    )
    assert package_problems(HOST, broker, parse_package("")) == [
        f"Mosquitto is not installed on {HOST}"
    ]
    pinned = broker.model_copy(
        update={"mosquitto": broker.mosquitto.model_copy(update={"package_version": "2.0.21"})}
    )
    assert package_problems(HOST, pinned, installed) == [
        f"Mosquitto on {HOST} is 2.0.11-1.2+deb12u2, the inventory pins 2.0.21 "
        "(mosquitto_package_version)"
    ]


def test_service_user_and_sandbox(broker: Broker) -> None:
    assert service_problems(HOST, True, True) == []
    assert service_problems(HOST, False, True) == [
        f"mosquitto.service is not enabled on {HOST}: it will not start at boot"
    ]
    props = parse_show(SHOW)
    assert user_problems(HOST, props["User"], "mosquitto", [("mosquitto", 407)]) == []
    assert user_problems(HOST, "", "mosquitto", [("mosquitto", 407), ("root", 9)]) == [
        f"mosquitto.service on {HOST} starts as root (User=), expected User=mosquitto: the "
        "broker starts with root privileges",
        f"a mosquitto process (pid 9) on {HOST} runs as root",
    ]
    report = "...\n→ Overall exposure level for mosquitto.service: 1.1 OK :-)\n"
    assert parse_exposure(report) == 1.1
    assert sandbox_problems(HOST, broker, props, 1.1) == []
    unsandboxed = {**props, "DropInPaths": "", "ProtectSystem": "full"}
    problems = sandbox_problems(HOST, broker, unsandboxed, 9.6)
    assert problems == [
        f"the sandbox drop-in {layout.DROPIN} is not loaded for mosquitto.service on {HOST}",
        f"mosquitto.service on {HOST} has ProtectSystem=full, expected ProtectSystem=strict",
        f"systemd-analyze security scores mosquitto on {HOST} 9.6 (expected <= 1.5): the "
        "sandbox is not in effect",
    ]


def test_acl(fleet: Fleet) -> None:
    good = render_acl(acl_file(fleet, HOST))
    assert acl_problems(HOST, fleet, HOST, good) == []
    everything = good + "\nuser gw-1\ntopic read #\n"
    assert acl_problems(HOST, fleet, HOST, everything) == [
        f"the ACL on {HOST} lets device gw-1 read '#' (not granted by the inventory)"
    ]
    swapped = (
        good
        + "\nuser gw-1\ntopic deny devices/gw-1/telemetry/#\ntopic write devices/gw-2/telemetry/#\n"
    )
    assert acl_problems(HOST, fleet, HOST, swapped) == [
        f"the ACL on {HOST} lets device gw-1 write 'devices/gw-2/telemetry/#' (not granted by "
        "the inventory)",
        f"the ACL on {HOST} no longer lets device gw-1 write 'devices/gw-1/telemetry/#' "
        "(granted by the inventory)",
    ]
    widened = good.replace("pattern read devices/%u/commands/#", "pattern read devices/#")
    assert acl_problems(HOST, fleet, HOST, widened)[:2] == [
        f"the ACL on {HOST} has the pattern 'read devices/#' for every user (not from the "
        "inventory)",
        f"the ACL on {HOST} lacks the device pattern 'read devices/%u/commands/#' (from the "
        "inventory)",
    ]
    extra = "topic read #\n" + good + "\nuser intruder\ntopic #\npattern read %u/#\n"
    problems = acl_problems(HOST, fleet, HOST, extra)
    assert problems[:2] == [
        f"the ACL on {HOST} has a rule for every client: 'topic read #' (not from the inventory)",
        f"the ACL on {HOST} has the pattern 'read %u/#' for every user (not from the inventory)",
    ]
    # A pattern reaches every user: each one is named with what it gains.
    assert f"the ACL on {HOST} lets device gw-1 read 'gw-1/#' (not granted by the inventory)" in (
        problems
    )
    assert (
        f"the ACL on {HOST} has rules for user intruder, who is not an active user of the "
        "inventory (readwrite #)"
    ) in problems


def test_topic_matching_and_grants() -> None:
    assert topic_matches("#", "devices/a/telemetry")
    assert not topic_matches("#", "$SYS/broker/version")
    assert topic_matches("$SYS/#", "$SYS/broker/version")
    assert topic_matches("devices/+/status", "devices/a/status")
    assert not topic_matches("devices/+/status", "devices/a/b/status")
    assert topic_matches("devices/a/#", "devices/a")
    grants = Grants([("read", "devices/+/telemetry/#"), ("write", "devices/+/commands/#")])
    assert grants.can_read("devices/x/telemetry/t") and not grants.can_write("devices/x/telemetry")
    assert grants.can_write("devices/x/commands/reboot") and not grants.can_read("$SYS/x")


def test_plugin_limits_memory_and_password_names_are_judged(
    fleet: Fleet, broker: Broker, config_text: str
) -> None:
    config = parse_config(config_text)
    both = _listener(broker, 8885)
    assert plugin_problems(HOST, fleet, broker, both, config) == []
    assert limit_problems(HOST, broker, config) == []
    no_plugin = parse_config(_edit(config_text, 8885, "plugin /", "#plugin /"))
    assert plugin_problems(HOST, fleet, broker, both, no_plugin)[0].startswith(
        f"iotfleet's plugin is not loaded on {HOST}:8885 (plugin is not set"
    )
    no_cn = parse_config(_edit(config_text, 8885, "plugin_opt_require_cn true\n", ""))
    assert plugin_problems(HOST, fleet, broker, both, no_cn) == [
        f"iotfleet's plugin on {HOST}:8885: plugin_opt_require_cn is not set, expected true"
    ]
    unbounded = parse_config(config_text.replace("max_packet_size ", "#max_packet_size "))
    assert limit_problems(HOST, broker, unbounded)[0].startswith(
        f"max_packet_size on {HOST} is not set (unlimited), expected "
        f"{broker.mosquitto.max_packet_size}"
    )
    ceiling = broker.mosquitto.memory_ceiling_mb * 1048576
    high = broker.mosquitto.memory_high_mb * 1048576
    props = {"MemoryMax": str(ceiling), "MemoryHigh": str(high)}
    assert memory_problems(HOST, broker, props) == []
    assert memory_problems(HOST, broker, {**props, "MemoryMax": "infinity"}) == [
        f"mosquitto.service on {HOST} has MemoryMax=infinity (no limit), expected {ceiling} "
        "bytes (mosquitto_memory_max_mb): the broker may take all of the host's memory"
    ]
    password = _listener(broker, 8884)
    names = sorted(password_users(fleet, broker.name, password))
    assert "wallboard" in names and "ops" not in names
    assert password_file_problems(HOST, fleet, broker.name, password, names) == []
    assert password_file_problems(HOST, fleet, broker.name, password, [*names, "ops"]) == [
        f"{layout.password_file(8884)} on {HOST} lets client ops log in with a password on "
        "listener 8884 (password), which the inventory does not"
    ]
    # A certificate+password listener has no place for a password-only client.
    assert "wallboard" not in password_users(fleet, broker.name, both)


def test_identities_file_names_extra_and_missing_identities() -> None:
    data = {"fleet_name": "unit", "fleet_devices": [{"id": "gw-1"}]}
    fleet = build_fleet([RawHost(HOST, ("brokers",), data)])
    names = broker_identities(fleet, HOST)
    assert "gw-1" in names
    assert identities_file_problems(HOST, fleet, HOST, names) == []
    path = layout.IDENTITIES_FILE
    assert identities_file_problems(HOST, fleet, HOST, [*names, "intruder"]) == [
        f"{path} on {HOST} lets user intruder in, which the inventory does not hold on this broker"
    ]
    assert identities_file_problems(HOST, fleet, HOST, [n for n in names if n != "gw-1"]) == [
        f"{path} on {HOST} lacks device gw-1, whom the inventory lets in there: the plugin "
        "refuses it"
    ]
    assert identities_file_problems(HOST, fleet, HOST, None) == [
        f"{path} (the identities iotfleet's plugin lets in) is missing on {HOST}"
    ]
