"""Work once per run, not once per host: every broker of a run renders its PKI files from one
index load, verified once (nothing in a run grows with brokers x devices on the PKI side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.fs.stage import Stage, staged
from iotfleet.model import Fleet, RawHost, build_fleet
from iotfleet.pki import PkiStore
from iotfleet.pki import index as index_module
from iotfleet.pki.errors import IndexCorruptError
from iotfleet.roles.pki import broker_pki_files, health_identity_files

BROKERS = ("broker-1", "broker-2", "broker-3", "broker-4")


def _fleet() -> Fleet:
    data = {
        "fleet_name": "once",
        "mosquitto_listeners": [{"port": 8883}],
        "fleet_devices": [{"id": f"gw-{n}"} for n in range(6)],
        "pki_passphrase_generated": True,
    }
    return build_fleet(
        [
            RawHost(name, ("brokers",), {**data, "ssh_hostname": f"127.0.0.{n + 1}"})
            for n, name in enumerate(BROKERS)
        ]
    )


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IOTFLEET_PKI_PASSPHRASE", raising=False)


def _count_index_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loads: list[int] = []
    real = index_module.load_index

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("iotfleet.pki.store.load_index", counted)
    return loads


def _render_every_broker(ctx: FleetContext) -> None:
    for broker in BROKERS:
        assert health_identity_files(ctx.pki, broker)
        assert broker_pki_files(ctx.pki, broker)


def test_every_broker_of_a_run_renders_from_one_index_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage = Stage()
    ctx = FleetContext.for_fleet(_fleet(), stage=stage)
    with staged(stage):
        reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    loads = _count_index_loads(monkeypatch)
    _render_every_broker(ctx)
    assert len(loads) == 1, f"{len(BROKERS)} brokers loaded the planned index {len(loads)} times"

    # Once committed, the same context reads the index from disk once more, then never again.
    stage.commit()
    _render_every_broker(ctx)
    _render_every_broker(ctx)
    assert len(loads) == 2


def test_a_changed_index_on_disk_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = Stage()
    ctx = FleetContext.for_fleet(_fleet(), stage=stage)
    with staged(stage):
        reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    stage.commit()
    loads = _count_index_loads(monkeypatch)
    _render_every_broker(ctx)
    index_json = ctx.pki.layout.index_json
    index_json.write_bytes(
        index_json.read_bytes()
    )  # new mtime: read again (same bytes: not re-verified)
    _render_every_broker(ctx)
    assert len(loads) == 2


def test_an_index_changed_after_a_verified_read_is_verified_again() -> None:
    """The once-per-run memo is keyed by content: an edit after a read is still refused."""
    stage = Stage()
    ctx = FleetContext.for_fleet(_fleet(), stage=stage)
    with staged(stage):
        reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
    stage.commit()
    _render_every_broker(ctx)
    index_json = ctx.pki.layout.index_json
    index_json.write_bytes(
        index_json.read_bytes().replace(b'"kind":"device"', b'"kind":"client"', 1)
    )
    with pytest.raises(IndexCorruptError, match="does not match its digest"):
        PkiStore(ctx.pki_settings.state_dir).certificate_pem(BROKERS[0])
