"""The report page in a real headless Chromium, read the way an operator reads it in the
morning: the failing broker at the top, the failure in plain words, what changed since the
run before, the charts with one point per run. Screenshots: tests/support/browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.check.results import RunResults
from iotfleet.report import page
from tests.support.browser import Page, chromium
from tests.support.report_runs import B1, B2, KEY, KEY_PROBLEM, KEY_TITLE, good_broken_repaired


@pytest.fixture(scope="module")
def browser() -> Iterator[Page]:
    with chromium() as opened:
        yield opened


def _open(browser: Page, tmp_path: Path, runs: list[RunResults], name: str) -> None:
    path = tmp_path / f"{name}.html"
    path.write_text(page.render(runs))
    browser.open(path)
    # The network log works: it saw the page itself (and, below, nothing else).
    assert browser.requested() == [path.resolve().as_uri()]


def points(browser: Page, chart: str) -> list[tuple[str, float, float]]:
    return [
        (c.get_attribute("data-series") or "", float(c.get_attribute("data-x") or "nan"),
         float(c.get_attribute("data-y") or "nan"))
        for c in browser.all(f"svg#{chart} circle.point")
    ]  # fmt: skip


def test_a_broken_run_after_a_good_one(browser: Page, tmp_path: Path) -> None:
    good, broken, _ = good_broken_repaired()
    _open(browser, tmp_path, [good, broken], "report-broken")
    assert browser.driver.title.startswith("FAIL · fleet plant")
    header = browser.one("#summary").text
    assert "FAIL" in header and "Fleet plant" in header
    assert "1 check failed on 1 of 2 brokers" in header
    assert "inventory/plant.py" in header and "2026-11-29 02:31 UTC" in header
    assert "iotfleet 0.1.0" in header and "Mosquitto 2.0.11-1.2+deb12u2" in header
    # Brokers first, the failing one at the top of the table, above the failures.
    rows = browser.all("#brokers tr.broker")
    assert [r.get_attribute("data-host") for r in rows] == [B1, B2]
    assert rows[0].text.split()[:2] == [B1, "FAILED"] and rows[1].text.split()[1] == "passed"
    assert rows[0].location["y"] < rows[1].location["y"] < browser.one("#failures").location["y"]
    assert rows[0].is_displayed() and rows[0].location["y"] < 900  # on the first screen
    # The failure in plain words, with its problem and the command that shows it.
    card = browser.one("#failures article.failure")
    assert card.find_element("css selector", ".title").text.startswith(KEY_TITLE)
    assert "new since the last run" in card.text
    assert f"on {B1}, {KEY}" in card.text
    assert KEY_PROBLEM in card.text
    command = card.find_element("css selector", ".command").text
    assert command.replace("\n", "") == (
        f"iotfleet check inventory/plant.py --limit {B1} -k 'test_owner_and_mode[{B1}:{KEY}]'"
    )
    # Changed since the previous run: the new failure, nothing fixed.
    changes = browser.one("#changes").text
    assert "Previous run: 2026-11-28 02:30 UTC, 0 failed of 8." in changes
    new = [li.text for li in browser.all("#new-failures li")]
    assert new == [f"{KEY_TITLE} on {B1}, {KEY}"]
    assert browser.all("#fixed") == []
    # Days left, soonest first.
    expiries = [r.text for r in browser.all("#expiries tr.expiry")]
    assert expiries[0].startswith(B1) and "CRL" in expiries[0] and expiries[0].endswith("6.5")
    # Charts: one point per run and series.
    assert len(points(browser, "chart-checks")) == 4
    assert sorted(points(browser, "chart-checks")) == [
        ("failed", 0, 0), ("failed", 1, 1), ("passed", 0, 6), ("passed", 1, 5),
    ]  # fmt: skip
    # Among 5 passed, the one failure is written out, not left to a line near zero.
    assert [v.text for v in browser.all("svg#chart-checks text.value")] == ["1"]
    assert len(points(browser, "chart-cert-days")) == len(points(browser, "chart-crl-days")) == 4
    assert [p[2] for p in points(browser, "chart-runs")] == [9.5, 10.5]
    for chart in browser.all("svg.chart"):
        assert chart.is_displayed() and chart.size["width"] > 300 and chart.size["height"] > 100
    # Offline: the page asked for nothing (no CDN, font, script or image).
    assert browser.requested() == []
    shot = browser.screenshot("report-broken")
    assert shot.stat().st_size > 20_000


def test_the_repaired_run_shows_the_fix_and_the_history(browser: Page, tmp_path: Path) -> None:
    runs = good_broken_repaired()
    _open(browser, tmp_path, runs, "report-repaired")
    assert "Every check passed on 2 brokers" in browser.one("#summary").text
    assert browser.one("#failures").text.endswith("None: every check that applies passed.")
    assert [li.text for li in browser.all("#fixed li")] == [f"{KEY_TITLE} on {B1}, {KEY}"]
    assert browser.all("#new-failures") == []
    failed = sorted(p for p in points(browser, "chart-checks") if p[0] == "failed")
    assert [(x, y) for _, x, y in failed] == [(0, 0), (1, 1), (2, 0)]  # appears, then fixed
    certs = points(browser, "chart-cert-days")
    assert sorted({s for s, _, _ in certs}) == [B1, B2] and len(certs) == 6
    assert [y for s, _, y in sorted(certs) if s == B1] == [90, 89, 88]
    runs_chart = points(browser, "chart-runs")
    assert [s for s, _, _ in sorted(runs_chart, key=lambda p: p[1])] == [
        "passed", "failed", "passed",
    ]  # fmt: skip
    assert "Trends (3 runs since 2026-11-28 02:30 UTC)" in browser.one("#trends").text
    browser.screenshot("report-repaired")
