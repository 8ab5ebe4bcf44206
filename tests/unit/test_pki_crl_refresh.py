"""The CRL timer's engine (issue 13): `refresh_crl` re-signs only the CRL, only inside its refresh
window; run daily with the fleet defaults the CRL never lapses, even with runs missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from iotfleet.model.fleet import PkiConfig
from iotfleet.pki import PkiSettings, PkiStore, reconcile, refresh_crl, status
from tests.unit.pki_helpers import ENV, FLEET, PASSPHRASE, settings_for

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)


def _fleet_defaults(state: Path) -> PkiSettings:
    defaults = PkiConfig()
    return settings_for(
        state,
        crl_days=defaults.crl_days,
        crl_refresh_before_days=defaults.crl_refresh_before_days,
    )


def _live_crl(store: PkiStore) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(store.crl_pem())


@pytest.mark.parametrize("missed", [(), (6, 7)], ids=["daily", "two-runs-missed"])
def test_daily_refresh_keeps_the_crl_current_for_30_days(
    tmp_path: Path, missed: tuple[int, ...]
) -> None:
    state = tmp_path / "pki"
    settings = _fleet_defaults(state)
    reconcile(settings, FLEET, now=T0)
    store = PkiStore(state)
    index_records = store.records()
    margins = []
    for day in range(1, 31):
        now = T0 + day * DAY
        if day not in missed:
            refresh_crl(settings, now=now)
        crl = _live_crl(store)
        assert crl.last_update_utc <= now < crl.next_update_utc, day  # type: ignore[operator]
        margins.append((crl.next_update_utc - now) / DAY)  # type: ignore[operator]
    assert min(margins) >= (3 if missed else 5), margins
    assert store.records() == index_records  # only the CRL changed


def test_refresh_writes_nothing_outside_the_window_and_status_warns_inside(
    tmp_path: Path,
) -> None:
    state = tmp_path / "pki"
    settings = _fleet_defaults(state)
    reconcile(settings, FLEET, now=T0)
    before = (state / "crl.pem").read_bytes()
    assert refresh_crl(settings, now=T0 + DAY) is None
    assert (state / "crl.pem").read_bytes() == before
    inside = T0 + 3 * DAY
    crl_row = next(r for r in status(settings, now=inside).rows if r.kind == "crl")
    assert crl_row.state == "renew" and crl_row.needs_attention
    assert "iotfleet pki refresh-crl" in crl_row.note
    next_update = refresh_crl(settings, now=inside)
    assert next_update == inside + timedelta(days=PkiConfig().crl_days)
    crl_row = next(r for r in status(settings, now=inside).rows if r.kind == "crl")
    assert crl_row.state == "ok"
    assert refresh_crl(settings, now=inside, force=True) is not None
