"""ACL rendering: deny by default, each device confined to its own topics."""

from __future__ import annotations

import pytest

from iotfleet.model import InventoryError, RawHost, build_fleet
from iotfleet.model.own_identities import (
    DELIVERY_IDENTITY,
    PROBE_DEVICE,
    PROBE_DEVICES,
    health_identity_name,
)
from iotfleet.mosquitto.acl import (
    acl_file,
    acl_rules,
    broker_identities,
    certificate_topics,
    effective_rules,
    pattern_conflicts,
    render_acl,
)

BROKER = "mqtt1.example.net"


def fleet(**data: object):
    return build_fleet([RawHost(BROKER, ("brokers",), {"fleet_name": "demo", **data})])


def test_device_gets_only_its_own_prefix() -> None:
    rules = acl_rules(fleet(fleet_devices=[{"id": "gw-1"}, {"id": "gw-2"}]), BROKER)
    assert rules["gw-1"] == [
        ("write", "devices/gw-1/telemetry/#"),
        ("write", "devices/gw-1/status"),
        ("read", "devices/gw-1/commands/#"),
        ("read", "iotfleet/pki/gw-1/certificate"),
        ("read", "iotfleet/pki/gw-1/rekey"),
        ("write", "iotfleet/pki/gw-1/csr"),  # its CSR, for a re-key over the air
    ]
    assert all("gw-1" not in topic for _, topic in rules["gw-2"])


def test_only_the_delivery_identity_writes_certificate_topics() -> None:
    f = fleet(
        fleet_devices=[{"id": "gw-1"}, {"id": "gw-2", "revoked": "keyCompromise"}],
        fleet_clients=[{"name": "ops", "roles": ["admin"]}],
    )
    rules = acl_rules(f, BROKER)
    # With "+": only the broker's identities log in (the plugin's identities_file).
    assert rules[DELIVERY_IDENTITY] == [
        ("write", "iotfleet/pki/+/certificate"),
        ("write", "iotfleet/pki/+/rekey"),
        ("read", "iotfleet/pki/+/csr"),
        ("read", "devices/+/status"),
    ]
    writers = {
        (user, topic)
        for user, granted in rules.items()
        for access, topic in granted
        if access in ("write", "readwrite") and topic.startswith("iotfleet/pki")
    }
    # Only iotfleet writes certificates and re-key requests; only the device writes its CSR
    # (the probes are devices under the same contract).
    assert writers == {
        (DELIVERY_IDENTITY, "iotfleet/pki/+/certificate"),
        (DELIVERY_IDENTITY, "iotfleet/pki/+/rekey"),
        ("gw-1", "iotfleet/pki/gw-1/csr"),
        *((probe, f"iotfleet/pki/{probe}/csr") for probe in PROBE_DEVICES),
    }
    assert certificate_topics(f) == [
        "iotfleet/pki/gw-1/certificate",
        "iotfleet/pki/gw-1/rekey",
        "iotfleet/pki/gw-1/csr",
    ]


def test_roles_expand_per_user_and_admin_alone_sees_sys() -> None:
    f = fleet(
        fleet_roles={"own-config": {"read": ["config/%u"]}},
        fleet_devices=[{"id": "gw-1", "roles": ["own-config"]}],
        fleet_clients=[
            {"name": "ops", "roles": ["admin"]},
            {"name": "dash", "roles": ["dashboard"]},
        ],
    )
    rules = acl_rules(f, BROKER)
    assert ("read", "config/gw-1") in rules["gw-1"]
    sys_readers = {u for u, r in rules.items() if any(t.startswith("$SYS") for _, t in r)}
    assert sys_readers == {"ops"}
    assert rules["dash"] == [
        ("read", "devices/+/telemetry/#"),
        ("read", "devices/+/status"),
        ("deny", "iotfleet/pki/#"),
    ]


def test_revoked_identities_lose_every_rule() -> None:
    f = fleet(fleet_devices=[{"id": "gw-1", "revoked": "keyCompromise"}, {"id": "gw-2"}])
    assert set(acl_rules(f, BROKER)) == {
        "gw-2",
        health_identity_name(BROKER),
        DELIVERY_IDENTITY,
        *PROBE_DEVICES,
    }


def test_rendering_is_deterministic_and_devices_are_patterns() -> None:
    f = fleet(
        fleet_devices=[{"id": f"gw-{i}"} for i in range(50)],
        fleet_clients=[{"name": "ops", "roles": ["admin"]}, {"name": "dash"}],
    )
    text = render_acl(acl_file(f, BROKER))
    assert text == render_acl(acl_file(f, BROKER))
    assert text.startswith("# managed by iotfleet")
    assert "pattern write devices/%u/telemetry/#\n" in text
    assert "pattern write iotfleet/pki/%u/csr\n" in text
    assert "user gw-1\n" not in text and "topic read #\n" not in text
    assert text.index("user dash\n") < text.index("user ops\n")


def test_identities_limited_to_some_brokers_exist_only_there() -> None:
    data = {
        "fleet_name": "demo",
        "fleet_devices": [{"id": "gw-1", "brokers": ["b1"]}, {"id": "gw-2"}],
        "fleet_clients": [{"name": "ann", "brokers": ["b2"], "roles": ["dashboard"]}],
    }
    two = build_fleet([RawHost("b1", ("brokers",), data), RawHost("b2", ("brokers",), data)])
    own = {DELIVERY_IDENTITY, *PROBE_DEVICES}
    assert set(acl_rules(two, "b1")) == {"gw-1", "gw-2", health_identity_name("b1"), *own}
    assert set(acl_rules(two, "b2")) == {"gw-2", "ann", health_identity_name("b2"), *own}
    # Only the broker's own identities log in: the patterns reach no one else.
    assert "gw-1" not in broker_identities(two, "b2")
    assert set(broker_identities(two, "b1")) == set(acl_rules(two, "b1"))


def test_unknown_broker_of_an_identity_is_refused() -> None:
    with pytest.raises(InventoryError) as caught:
        fleet(fleet_devices=[{"id": "gw-1", "brokers": ["nope"]}])
    assert "device gw-1: brokers: 'nope' is not a broker host" in str(caught.value)


def test_probe_identities_are_confined_like_devices() -> None:
    rules = acl_rules(fleet(fleet_devices=[{"id": "gw-1"}]), BROKER)
    assert rules[PROBE_DEVICE] == [
        ("write", f"devices/{PROBE_DEVICE}/telemetry/#"),
        ("write", f"devices/{PROBE_DEVICE}/status"),
        ("read", f"devices/{PROBE_DEVICE}/commands/#"),
        ("read", f"iotfleet/pki/{PROBE_DEVICE}/certificate"),
        ("read", f"iotfleet/pki/{PROBE_DEVICE}/rekey"),
        ("write", f"iotfleet/pki/{PROBE_DEVICE}/csr"),
    ]


def test_the_acl_does_not_grow_with_the_fleet() -> None:
    """10 devices or 10,000: the same ACL lines (devices are the patterns), while each device
    still gets exactly its own rules and the broker holds every identity."""

    def rendered(count: int) -> tuple[str, list[str]]:
        f = fleet(
            fleet_devices=[{"id": f"gw-{i}"} for i in range(count)],
            fleet_clients=[{"name": "ops", "roles": ["admin"]}, {"name": "dash"}],
        )
        acl = acl_file(f, BROKER)
        for device in ("gw-0", f"gw-{count - 1}"):
            assert effective_rules(acl, device) == set(acl_rules(f, BROKER)[device])
        return render_acl(acl), broker_identities(f, BROKER)

    small, small_ids = rendered(10)
    large, large_ids = rendered(10_000)
    assert large == small
    assert len(large.splitlines()) < 60
    assert len(large_ids) - len(small_ids) == 10_000 - 10


def test_only_devices_with_their_own_prefix_or_roles_get_a_block() -> None:
    f = fleet(
        fleet_roles={"own-config": {"read": ["config/%u"]}},
        fleet_devices=[
            {"id": "gw-1"},
            {"id": "gw-2", "topic_prefix": "plant/line-2"},
            {"id": "gw-3", "roles": ["own-config"]},
        ],
    )
    acl = acl_file(f, BROKER)
    assert "gw-1" not in acl.users
    # Its own prefix instead of devices/gw-2: the pattern's default prefix is denied.
    assert acl.users["gw-2"] == [
        ("write", "plant/line-2/telemetry/#"),
        ("write", "plant/line-2/status"),
        ("read", "plant/line-2/commands/#"),
        ("deny", "devices/gw-2/telemetry/#"),
        ("deny", "devices/gw-2/status"),
        ("deny", "devices/gw-2/commands/#"),
    ]
    assert acl.users["gw-3"] == [("read", "config/gw-3")]
    for user, rules in acl_rules(f, BROKER).items():
        assert effective_rules(acl, user) == set(rules), user


def test_a_role_naming_a_pattern_topic_with_other_access_is_refused_and_fails_closed() -> None:
    """A client ``mon`` whose role reads ``devices/%u/telemetry/#``: the device pattern gives
    every name write there, and no ACL line can keep the read while taking the write away."""
    f = fleet(
        fleet_roles={"watch-own": {"read": ["devices/%u/telemetry/#"]}},
        fleet_devices=[{"id": "gw-1"}],
        fleet_clients=[{"name": "mon", "roles": ["watch-own"]}],
    )
    assert pattern_conflicts(f) == [
        "client mon: its roles grant read on devices/mon/telemetry/#, which every device has "
        "with write (an ACL pattern): grant readwrite or nothing there, or rename it"
    ]
    granted = effective_rules(acl_file(f, BROKER), "mon")
    assert ("write", "devices/mon/telemetry/#") not in granted  # closed, not open
    # readwrite covers the pattern's write: nothing to refuse, the grant is what it says.
    both = fleet(
        fleet_roles={"own-topics": {"readwrite": ["devices/%u/telemetry/#"]}},
        fleet_clients=[{"name": "mon", "roles": ["own-topics"]}],
    )
    assert pattern_conflicts(both) == []
    granted = effective_rules(acl_file(both, BROKER), "mon")
    assert ("readwrite", "devices/mon/telemetry/#") in granted


def test_devices_the_patterns_describe_get_no_block_and_exactly_their_rules() -> None:
    """The rendering skips computing rules for devices the patterns describe exactly; what
    Mosquitto grants every user is still exactly the user's rules."""
    f = fleet(
        fleet_roles={"own-config": {"read": ["config/%u"]}},
        fleet_devices=[
            {"id": "gw-1"},
            {"id": "gw-2"},
            {"id": "gw-roles", "roles": ["own-config"]},
            {"id": "gw-prefix", "topic_prefix": "plant/line-3/gw-prefix"},
            {"id": "gw-gone", "revoked": "keyCompromise"},
        ],
        fleet_clients=[
            {"name": "ops", "roles": ["admin"]},
            {"name": "dash", "roles": ["dashboard"]},
        ],
    )
    acl = acl_file(f, BROKER)
    everyone = acl_rules(f, BROKER)
    assert "gw-1" not in acl.users and "gw-2" not in acl.users
    assert {"gw-roles", "gw-prefix", "ops", "dash"} <= set(acl.users)
    for user, rules in everyone.items():
        granted = {r for r in effective_rules(acl, user) if r[0] != "deny"}
        assert granted == {r for r in rules if r[0] != "deny"}, user
    assert effective_rules(acl, "gw-1") == set(everyone["gw-1"])
    assert broker_identities(f, BROKER) == sorted(everyone)
    assert "gw-gone" not in broker_identities(f, BROKER)


def test_the_users_of_a_broker_are_remembered_per_fleet_object_not_across_copies() -> None:
    f = fleet(fleet_devices=[{"id": "gw-1"}, {"id": "gw-2"}])
    assert {"gw-1", "gw-2"} <= f.users_of(BROKER)
    fewer = f.model_copy(update={"devices": f.devices[:1]})  # another object, another answer
    assert "gw-2" not in fewer.users_of(BROKER) and "gw-2" in f.users_of(BROKER)
    mine = f.users_of(BROKER)
    mine.discard("gw-1")  # a caller's set is its own
    assert "gw-1" in f.users_of(BROKER)


def test_pattern_conflicts_skip_only_devices_the_patterns_describe() -> None:
    f = fleet(
        fleet_roles={"read-own-status": {"read": ["devices/%u/status"]}},
        fleet_devices=[
            *({"id": f"gw-{n}"} for n in range(50)),
            {"id": "gw-own", "topic_prefix": "plant/line-2", "roles": ["read-own-status"]},
        ],
    )
    assert pattern_conflicts(f) == [
        "device gw-own: its roles grant read on devices/gw-own/status, which every device has "
        "with write (an ACL pattern): grant readwrite or nothing there, or rename it"
    ]
