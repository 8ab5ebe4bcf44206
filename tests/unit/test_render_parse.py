"""Round trips: what the role renders, the checks' parsers read back as the inventory said.

The ACL (``iotfleet.mosquitto.acl``) and mosquitto.conf (rendered by the role, parsed by
``iotfleet.mosquitto.conf``) each have one renderer and one parser; if either drifts, the
compliance checks would judge a correct broker wrong, or a wrong one right.
"""

from __future__ import annotations

import pytest

from iotfleet.model import Fleet, RawHost, build_fleet
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import acl_file, acl_rules, effective_rules, parse_acl, render_acl
from iotfleet.mosquitto.conf import parse_config
from iotfleet.roles.mosquitto.render import BrokerConfig


@pytest.fixture
def fleet() -> Fleet:
    data = {
        "fleet_name": "roundtrip",
        "ssh_hostname": "192.0.2.10",
        "mosquitto_listeners": [
            {"port": 8883},
            {"port": 8884, "auth": "password"},
            {"port": 8885, "auth": "certificate+password", "bind_address": "192.0.2.10"},
            {"port": 8443, "protocol": "websockets", "auth": "password"},
        ],
        "fleet_devices": [{"id": "gw-1"}, {"id": "gw-2", "revoked": "keyCompromise"}],
        "fleet_clients": [
            {"name": "ops", "roles": ["admin"]},
            {"name": "wall", "roles": ["dashboard"], "auth": "password", "password": "generated"},
        ],
    }
    return build_fleet([RawHost("b1.example.net", ("brokers",), data)])


def test_the_acl_parses_back_to_the_rules_it_was_rendered_from(fleet: Fleet) -> None:
    rules = acl_rules(fleet, "b1.example.net")
    rendered = acl_file(fleet, "b1.example.net")
    users, general = parse_acl(render_acl(rendered))
    # Nothing applies to every client but the device patterns.
    assert general == [f"pattern {a} {t}" for a, t in rendered.patterns]
    assert users == {user: set(granted) for user, granted in rendered.users.items()}
    # Each user gets, by its block and the patterns, exactly what the inventory grants.
    for user, granted in rules.items():
        assert effective_rules(rendered, user) == set(granted), user
    assert "gw-1" not in users  # a device on the default prefix has no block at all


def test_mosquitto_conf_parses_back_to_the_inventorys_listeners(fleet: Fleet) -> None:
    broker = fleet.broker("b1.example.net")
    config = parse_config(BrokerConfig(broker, fleet).text())
    assert config.per_listener_settings
    wanted = broker.mosquitto.listeners
    assert [(c.port, c.bind_address) for c in config.listeners] == [
        (w.port, w.bind_address) for w in wanted
    ]
    for want in wanted:
        got = config.listener(want.port)
        assert got is not None and not got.implicit
        assert config.effective(got, "allow_anonymous") == "false"
        assert config.effective(got, "protocol") == want.protocol
        assert config.effective(got, "acl_file") == layout.ACL_FILE
        assert got.tls == want.tls
        password = config.effective(got, "password_file")
        assert password == (layout.password_file(want.port) if want.requires_password else None)
        if want.tls:
            assert config.effective(got, "crlfile") == layout.CRL
            assert config.effective(got, "cafile") == layout.CA_CHAIN
            assert config.effective(got, "keyfile") == layout.SERVER_KEY
        needs_certificate = want.auth in ("certificate", "certificate+password")
        assert (config.effective(got, "require_certificate") == "true") == needs_certificate


def test_the_candidate_config_moves_every_file_and_keeps_no_persistence(fleet: Fleet) -> None:
    broker = fleet.broker("b1.example.net")
    staged = {path: f"/staging/{path.strip('/').replace('/', '__')}" for path in (
        layout.ACL_FILE, layout.CRL, layout.SERVER_KEY, layout.password_file(8884)
    )}  # fmt: skip
    config = parse_config(BrokerConfig(broker, fleet).text(staged, candidate=True))
    assert config.global_options.get("persistence") == "false"
    for listener in config.listeners:
        assert listener.bind_address == "127.0.0.1"
        assert config.effective(listener, "acl_file") == staged[layout.ACL_FILE]
    assert config.effective(config.listeners[0], "crlfile") == staged[layout.CRL]
