"""Plan, then commit: planning a fleet's PKI and secrets writes nothing; the commit writes what
was planned (the same bytes the roles rendered from), and refuses a state changed meanwhile."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.paths import fleet_dir
from iotfleet.fleet.pki import EXPIRED_CANARY, REVOKED_CANARY, load_canary, reconcile_fleet
from iotfleet.fleet.secrets import SecretError, SecretStore
from iotfleet.fs.errors import PlanConflictError
from iotfleet.fs.stage import Stage, staged
from iotfleet.model import Fleet, RawHost, build_fleet
from iotfleet.pki import PkiStore, ReconcileReport

FLEET = "planned"


def _fleet(devices: list[str], *, generated_passphrase: bool = True) -> Fleet:
    data = {
        "fleet_name": FLEET,
        "ssh_hostname": "127.0.0.1",
        "mosquitto_listeners": [{"port": 8883}, {"port": 8884, "auth": "password"}],
        "fleet_devices": [{"id": d} for d in devices],
        "fleet_clients": [
            {"name": "wall", "roles": ["dashboard"], "auth": "password", "password": "generated"}
        ],
        "pki_passphrase_generated": generated_passphrase,
    }
    return build_fleet([RawHost("broker-1", ("brokers",), data)])


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its digest and mode: what "byte-identical" compares."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        + f" {p.stat().st_mode:o}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": "dir" for p in root.rglob("*") if p.is_dir()}


def _plan(devices: list[str]) -> tuple[FleetContext, Stage, ReconcileReport]:
    stage = Stage()
    ctx = FleetContext.for_fleet(_fleet(devices), stage=stage)
    with staged(stage):
        report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    return ctx, stage, report


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IOTFLEET_PKI_PASSPHRASE", raising=False)


def test_planning_a_fresh_fleet_writes_nothing_and_the_commit_writes_what_was_read() -> None:
    state = fleet_dir(FLEET)
    ctx, stage, report = _plan(["gw-1", "gw-2"])
    assert _snapshot(state.parent) == {}, "planning wrote to the state directory"
    assert report.ca_created and set(report.issued) >= {"gw-1", "gw-2"}
    # The roles render from the plan as if it were committed.
    planned_cert = ctx.pki.certificate_pem("gw-1")
    planned_key = ctx.pki.private_key_pem("gw-1")
    planned_crl = ctx.pki.crl_pem()
    planned_password = ctx.passwords["wall"].get_secret_value()
    assert _snapshot(state.parent) == {}

    stage.commit()
    disk = PkiStore(ctx.pki_settings.state_dir)
    assert disk.certificate_pem("gw-1") == planned_cert
    assert disk.private_key_pem("gw-1") == planned_key
    assert disk.crl_pem() == planned_crl
    again = FleetContext.for_fleet(_fleet(["gw-1", "gw-2"]), read_only=True)
    assert again.passwords["wall"].get_secret_value() == planned_password
    assert load_canary(state, REVOKED_CANARY).certificate_pem
    assert load_canary(state, EXPIRED_CANARY).certificate_pem
    # The generated CA passphrase was committed with the rest: the next run opens the CA.
    second = FleetContext.for_fleet(_fleet(["gw-1", "gw-2"]))
    assert not reconcile_fleet(second.fleet, second.pki_settings, second.state_dir).changed
    for key in state.rglob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key


def test_planning_a_removal_revokes_nothing_until_the_commit() -> None:
    ctx, stage, _ = _plan(["gw-1", "gw-2"])
    stage.commit()
    state = fleet_dir(FLEET)
    before = _snapshot(state)

    ctx, stage, report = _plan(["gw-1"])
    assert report.revoked == ("gw-2",)
    assert "revoke gw-2 (cessationOfOperation)" in report.summary(planned=True, names_up_to=5)
    assert _snapshot(state) == before, "a planned revocation changed the state"
    assert PkiStore(ctx.pki_settings.state_dir).record("gw-2").status == "valid"  # type: ignore[union-attr]

    stage.commit()
    assert PkiStore(ctx.pki_settings.state_dir).record("gw-2").status == "revoked"  # type: ignore[union-attr]


def test_a_commit_refuses_a_state_that_changed_since_it_was_planned() -> None:
    _, first, _ = _plan(["gw-1"])
    _, second, _ = _plan(["gw-1"])
    first.commit()
    state = fleet_dir(FLEET)
    before = _snapshot(state)
    with pytest.raises(PlanConflictError, match=r"changed since this run planned|another run"):
        second.commit()
    assert _snapshot(state) == before, "the refused commit wrote something"


def test_a_no_change_plan_has_nothing_to_commit() -> None:
    _, stage, _ = _plan(["gw-1"])
    stage.commit()
    _, stage, report = _plan(["gw-1"])
    assert stage.empty and not report.changed


def test_read_only_commands_never_create_a_secret(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets", read_only=True)
    with pytest.raises(SecretError, match="run the rollout first"):
        store.generated("mqtt-password/wall")
    assert not (tmp_path / "secrets").exists()
    with pytest.raises(SecretError, match="run the rollout first"):
        FleetContext.for_fleet(_fleet(["gw-1"]), read_only=True)
    assert not fleet_dir(FLEET).exists()


def test_state_staged_after_every_host_got_no_change_stops_the_run_before_its_operations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No operation would commit what a host's rendering staged after the plan was found empty:
    # the run stops before its first operation, names what, and writes nothing.
    import pyinfra_cli.cli as cli

    from iotfleet.roles import fleet_context
    from iotfleet.roles.refusal import RolloutRefusedError

    _, stage, _ = _plan(["gw-1"])
    stage.commit()
    ctx, stage, report = _plan(["gw-1"])
    assert stage.empty
    ran: list[object] = []
    monkeypatch.setattr(cli, "run_ops", lambda state, *a, **k: ran.append(state))
    monkeypatch.setattr(fleet_context, "_hosts_committing", set())
    plan = fleet_context.FleetPlan(ctx, report, stage)
    fleet_context.recheck_before_operations(plan)
    late = ctx.secrets.generated("wifi-passphrase/late")
    before = _snapshot(fleet_dir(FLEET))
    with pytest.raises(RolloutRefusedError, match="planned after the run listed no change") as e:
        cli.run_ops("state")
    assert "wifi-passphrase/late" in str(e.value) and late not in str(e.value)
    assert ran == [] and _snapshot(fleet_dir(FLEET)) == before
    # Had a host been given the commit operation, the run goes on (that operation commits it).
    monkeypatch.setattr(fleet_context, "_hosts_committing", {"broker-1"})
    cli.run_ops("state")
    assert ran == ["state"]
