"""sshd hardening: the drop-in the role renders, what the check expects from `sshd -T`, and
inventories the hardening would lock out refused up front."""

from __future__ import annotations

import pytest

from iotfleet.check.ssh_checks import expected_sshd, parse_sshd_t, sshd_problems
from iotfleet.model import InventoryError, RawHost, SshHardeningSettings, build_fleet
from iotfleet.roles.ssh_hardening import render_dropin

HOST = "mqtt1.example.net"


def broker_data(**data: object) -> list[RawHost]:
    return [RawHost(HOST, ("brokers",), {"fleet_name": "unit", **data})]


def test_rendered_dropin_sets_what_the_check_expects() -> None:
    broker = build_fleet(broker_data(ssh_hardening_enabled=True)).brokers[0]
    dropin = render_dropin(broker)
    assert dropin.startswith("# managed by iotfleet")
    # What sshd -T prints for the drop-in (keywords lower-cased, prohibit-password renamed).
    as_sshd = parse_sshd_t(dropin.replace("prohibit-password", "without-password"))
    wanted = expected_sshd(broker.ssh_hardening)
    assert {k: as_sshd.get(k) for k in wanted} == wanted


def test_sshd_problems_name_each_loosened_setting() -> None:
    settings = SshHardeningSettings(enabled=True)
    good = expected_sshd(settings)
    assert sshd_problems(HOST, settings, good, ["publickey"]) == []
    loose = {**good, "passwordauthentication": "yes", "allowtcpforwarding": "yes"}
    del loose["authenticationmethods"]
    assert sshd_problems(HOST, settings, loose, ["publickey", "password"]) == [
        f"sshd on {HOST} has authenticationmethods (not set), expected publickey",
        f"sshd on {HOST} has passwordauthentication yes, expected no",
        f"sshd on {HOST} has allowtcpforwarding yes, expected no",
        f"sshd on {HOST} offers password logins to anyone who connects (offered: publickey, "
        "password): passwords can be guessed",
    ]
    assert sshd_problems(HOST, settings, {}, None) == [
        f"sshd -T printed nothing on {HOST}: the SSH configuration cannot be read"
    ]


def test_an_inventory_the_hardening_would_lock_out_is_refused() -> None:
    with pytest.raises(InventoryError) as caught:
        build_fleet(broker_data(ssh_hardening_enabled=True, ssh_password="hunter2"))
    assert "ssh_hardening_enabled: the inventory logs in with ssh_password" in str(caught.value)
    with pytest.raises(InventoryError) as caught:
        build_fleet(
            broker_data(
                ssh_hardening_enabled=True, ssh_hardening_permit_root_login="no", ssh_user="root"
            )
        )
    assert "ssh_hardening_permit_root_login" in str(caught.value)
    # Off by default: a password inventory is fine then.
    assert (
        build_fleet(broker_data(ssh_password="hunter2")).brokers[0].ssh_hardening.enabled is False
    )


def test_bad_algorithm_and_unknown_key_are_named() -> None:
    with pytest.raises(InventoryError) as caught:
        build_fleet(broker_data(ssh_hardening_ciphers=["aes128 cbc"], ssh_hardening_foo=1))
    text = str(caught.value)
    assert "ssh_hardening_ciphers[0]" in text
    assert "ssh_hardening_foo" in text


def test_password_limit_settings_validated() -> None:
    with pytest.raises(InventoryError) as caught:
        build_fleet(broker_data(firewall_password_burst=0, firewall_password_limit_exempt=["x"]))
    text = str(caught.value)
    assert "firewall_password_burst" in text and "firewall_password_limit_exempt" in text
