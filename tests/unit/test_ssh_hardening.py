"""sshd hardening: the drop-in the role renders, what the check expects from `sshd -T`, and
inventories the hardening would lock out refused up front."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from iotfleet.check.ssh_checks import expected_sshd, parse_sshd_t, sshd_problems
from iotfleet.model import InventoryError, RawHost, SshHardeningSettings, build_fleet
from iotfleet.roles.host_state import HostQuery, parse_output, query_command
from iotfleet.roles.ssh_hardening import (
    DROPIN,
    STAGING_ROOT,
    STALE_STAGING_MINUTES,
    install_script,
    render_dropin,
)

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


def _staging_run(
    tmp: Path, content: str, sshd_exit: int = 0
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The real install script with its paths moved into ``tmp`` and a stand-in ``sshd`` that
    records what ``sshd -t -f`` was given (the included files, in order) and exits as told."""
    bin_dir, seen = tmp / "bin", tmp / "seen"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "sshd"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "-t -f" ]; then sed -n "s/^Include //p" "$3" >>{seen}; '
        f'cat "$(sed -n "1s/^Include //p" "$3")" >>{seen}; fi\n'
        f"exit {sshd_exit}\n"
    )
    fake.chmod(0o755)
    script = (
        install_script(content)
        .replace(STAGING_ROOT, str(tmp / "staging"))
        .replace(str(Path(STAGING_ROOT).parent), str(tmp))
        .replace(DROPIN, str(tmp / "dropin.conf"))
        .replace(" -o root -g root", "")
        .replace("systemctl is-active -q ssh.service", "false")
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
    return result, seen


def test_the_candidate_is_staged_per_run_tested_first_and_removed(tmp_path: Path) -> None:
    first, seen = _staging_run(tmp_path, "PasswordAuthentication no\n")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "dropin.conf").read_text() == "PasswordAuthentication no\n"
    candidate, main, tested = seen.read_text().splitlines()
    # sshd -t read the staged candidate first, then the whole configuration.
    assert candidate.startswith(f"{tmp_path}/staging/run.") and candidate.endswith(".conf")
    assert (main, tested) == ("/etc/ssh/sshd_config", "PasswordAuthentication no")
    assert list((tmp_path / "staging").iterdir()) == []  # removed by the same command
    seen.unlink()
    assert _staging_run(tmp_path, "PasswordAuthentication no\n")[0].returncode == 0
    assert seen.read_text().splitlines()[0] != candidate  # a directory of each run's own


def test_a_candidate_sshd_refuses_is_not_installed_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "dropin.conf").write_text("# the last good drop-in\n")
    refused, _ = _staging_run(tmp_path, "NoSuchKeyword yes\n", sshd_exit=255)
    assert refused.returncode != 0
    assert (tmp_path / "dropin.conf").read_text() == "# the last good drop-in\n"
    assert list((tmp_path / "staging").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "dropin.conf", "seen", "staging"]


def test_staging_left_by_a_killed_run_goes_after_a_day_another_runs_stays(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    stale, live = tmp_path / "staging" / "run.killed", tmp_path / "staging" / "run.running"
    stale.mkdir()
    live.mkdir()
    day_and_a_bit = time.time() - STALE_STAGING_MINUTES * 60 - 600
    os.utime(stale, (day_and_a_bit, day_and_a_bit))
    assert _staging_run(tmp_path, "PasswordAuthentication no\n")[0].returncode == 0
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["run.running"]


def test_the_leftover_check_lists_what_exists_and_never_fails(tmp_path: Path) -> None:
    kept, gone = tmp_path / "sshd-hardening.conf", tmp_path / "sshd-test.conf"
    kept.write_text("# staged by an older release\n")
    query = HostQuery(paths=frozenset({str(kept), str(gone)}))
    result = subprocess.run(
        ["sh", "-c", query_command(query)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0  # a path removed meanwhile (by another rollout) is no error
    assert list(parse_output(result.stdout.splitlines()).paths) == [str(kept)]
