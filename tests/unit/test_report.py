"""Run history, changes between runs, results.json, the Prometheus textfile and the page's
text (the page as a person sees it: tests/unit/test_report_page.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from iotfleet.check.results import RunResults
from iotfleet.cli.report import cli as report_cli
from iotfleet.report import history, page
from iotfleet.report.prometheus import textfile
from tests.support.report_runs import B1, B2, KEY, KEY_PROBLEM, KEY_TITLE, good_broken_repaired, run


def test_results_json_has_fleet_time_and_numeric_days_left(tmp_path: Path) -> None:
    good = run(0)
    good.save(tmp_path / "results.json")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == 2
    assert (data["fleet"], data["started"], data["passed"]) == (
        "plant",
        "2026-11-28T02:30:00Z",
        True,
    )
    assert data["checks"] == {
        "passed": 6, "failed": 0, "error": 0, "not applicable": 2, "skipped": 0,
    }  # fmt: skip
    assert data["brokers"][B1] == {
        "state": "passed",
        "mosquitto_version": "2.0.11-1.2+deb12u2",
        "checks": {"passed": 3, "failed": 0, "error": 0, "not applicable": 1, "skipped": 0},
    }
    certificate = next(
        e for e in data["expiries"] if e["host"] == B2 and e["kind"] == "certificate"
    )
    assert certificate == {
        "host": B2,
        "kind": "certificate",
        "name": "broker certificate",
        "at": "2027-03-28T02:30:00Z",
        "days_left": 120.0,
    }
    crl = next(e for e in data["expiries"] if e["host"] == B1 and e["kind"] == "crl")
    assert crl["days_left"] == 6.5
    assert data["identities"][1] == {
        "kind": "device",
        "name": "sensor-007",
        "at": "2026-12-23T02:30:00Z",
        "days_left": 25.0,
        "state": "renew",
    }
    assert data["identity_states"] == {"ok": 3, "renew": 1}
    loaded = RunResults.load(tmp_path / "results.json")
    assert loaded == replace(good, identity_states=good.identity_counts())
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644


def test_history_keeps_every_run_in_order_and_drops_old_ones(tmp_path: Path) -> None:
    store = tmp_path / "history"
    runs = good_broken_repaired()
    paths = [history.append(store, r) for r in reversed(runs)]
    assert len(set(paths)) == 3 and all(p.parent == store / "plant" for p in paths)
    assert [r.started for r in history.load(store, "plant")] == [r.started for r in runs]
    # A second run in the same second never replaces the first.
    again = history.append(store, runs[0])
    assert again.name.endswith("-1.json") and len(history.load(store, "plant")) == 4
    again.unlink()
    (store / "plant" / "not-a-run.json").write_text("{")
    other = run(5)
    other.fleet = "../other fleet"
    history.append(store, other)
    assert (store / "_other_fleet").is_dir()  # never outside the history
    assert history.fleets(store) == ["../other fleet", "plant"]
    many = run(6)
    many.fleet = "big"
    many.identities = [replace(many.identities[1], name=f"d{n}") for n in range(100)]
    history.append(store, many)
    big = history.load(store, "big")[0]
    assert len(big.identities) == history.KEEP_IDENTITIES
    assert big.identity_states == {"renew": 100}  # counted over all of them
    assert "100 certificates and CRLs in the PKI" in page.render([big])
    removed = history.prune(store, "plant", 1.5, runs[2].started)
    assert [p.name for p in removed] == ["20261128T023000Z.json"]
    assert [r.started for r in history.load(store, "plant")] == [r.started for r in runs[1:]]


def test_changes_name_new_failures_fixes_and_brokers() -> None:
    good, broken, repaired = good_broken_repaired()
    first = history.changes(None, good)
    assert first.previous is None and not first.any
    worse = history.changes(good, broken)
    assert [(r.host, r.target, r.message) for r in worse.new_failures] == [
        (B1, f"{B1}:{KEY}", KEY_PROBLEM)
    ]
    assert worse.fixed == [] and worse.new_brokers == []
    better = history.changes(broken, repaired)
    assert [(r.host, r.check, r.outcome) for r in better.fixed] == [(B1, KEY_TITLE, "passed")]
    assert better.new_failures == []
    grown = history.changes(run(0, brokers=(B1,)), run(1, brokers=(B2,)))
    assert (grown.new_brokers, grown.gone_brokers) == ([B2], [B1])
    assert history.changes(broken, broken).any is False


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_prometheus_textfile() -> None:
    broken = run(1, broken=True)
    text = textfile(broken)
    samples = _samples(text)
    key = f'fleet="plant",broker="{B1}",check="test_owner_and_mode",title="{KEY_TITLE}"'
    assert samples[f"iotfleet_check_passed{{{key}}}"] == 0
    assert samples[key.replace(B1, B2).join(("iotfleet_check_passed{", "}"))] == 1
    # Checks that did not apply are no verdict: absent.
    assert "test_wrong_password_refused" not in text
    assert samples[f'iotfleet_broker_compliant{{fleet="plant",broker="{B1}"}}'] == 0
    assert samples[f'iotfleet_broker_compliant{{fleet="plant",broker="{B2}"}}'] == 1
    assert samples[f'iotfleet_broker_checks{{fleet="plant",broker="{B1}",outcome="failed"}}'] == 1
    cert = f'fleet="plant",broker="{B1}",kind="certificate",certificate="broker certificate"'
    left = (broken.expiries[0].at - broken.started).total_seconds()
    assert samples[f"iotfleet_certificate_expiry_seconds{{{cert}}}"] == left
    assert samples[f"iotfleet_certificate_not_after_timestamp_seconds{{{cert}}}"] == (
        broken.expiries[0].at.timestamp()
    )
    crl = f'iotfleet_crl_next_update_seconds{{fleet="plant",broker="{B1}"}}'
    assert samples[crl] == timedelta(days=6, hours=12).total_seconds()
    assert samples['iotfleet_check_last_run_timestamp_seconds{fleet="plant"}'] == (
        broken.started.timestamp()
    )
    device = 'fleet="plant",kind="device",identity="sensor-007"'
    assert (
        samples[f"iotfleet_identity_expiry_seconds{{{device}}}"]
        == (broken.identities[1].at - broken.started).total_seconds()
    )
    assert samples[f"iotfleet_identity_not_after_timestamp_seconds{{{device}}}"] == (
        broken.identities[1].at.timestamp()
    )
    assert samples['iotfleet_check_last_run_duration_seconds{fleet="plant"}'] == 10.5
    assert samples['iotfleet_check_last_run_success{fleet="plant"}'] == 0
    assert _samples(textfile(run(2)))['iotfleet_check_last_run_success{fleet="plant"}'] == 1
    # Every family is declared once, before its samples.
    names = re.findall(r"^# TYPE (\S+) gauge$", text, re.M)
    assert len(names) == len(set(names)) == 12
    odd = run(0)
    odd.fleet = 'a "quoted"\\fleet\n'
    assert 'fleet="a \\"quoted\\"\\\\fleet\\n"' in textfile(odd)


def test_page_is_self_contained_and_in_plain_words() -> None:
    html = page.render(good_broken_repaired()[:2])
    # Nothing from elsewhere: no script, stylesheet, font, image or frame to fetch.
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", html, re.I)
    assert re.findall(r"https?://[^\s\"'<]+", html) == ["http://www.w3.org/2000/svg"] * 4
    assert "::" not in html and "[gw" not in html  # no pytest node ids, no xdist noise
    assert KEY_PROBLEM in html and KEY_TITLE.replace("'", "&#39;") in html
    assert html.index(B1) < html.index(B2)  # the failing broker comes first
    # The PKI's identities closest to expiry, with how many need a rollout.
    assert "4 certificates and CRLs in the PKI on the control machine;\n    1 inside" in html
    assert "<td>device</td><td>sensor-007</td>" in html


def test_the_command_on_the_page_selects_exactly_that_check(tmp_path: Path) -> None:
    """The page's ``-k`` is the check's pytest name: pytest selects that test alone."""
    broken = run(1, broken=True)
    failed = broken.failed[0]
    command = page.check_command(broken, failed)
    assert command == (
        f"iotfleet check inventory/plant.py --limit {B1} -k 'test_owner_and_mode[{B1}:{KEY}]'"
    )
    (tmp_path / "test_k.py").write_text(
        "import pytest\n"
        f"@pytest.mark.parametrize('p', ['{B1}:{KEY}', '{B1}:/etc/mosquitto/acl', "
        f"'{B2}:{KEY}'])\n"
        "def test_owner_and_mode(p): pass\n"
    )
    keyword = command.rsplit(" -k ", 1)[1].strip("'")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-k", keyword, "test_k.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert f"test_k.py::test_owner_and_mode[{B1}:{KEY}]" in result.stdout
    assert "1/3 tests collected" in result.stdout, result.stdout


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    store = tmp_path / "reports" / "history"
    for r in good_broken_repaired():
        history.append(store, r)
    return tmp_path / "reports"


def test_report_command_rebuilds_the_page_from_the_history(reports: Path) -> None:
    result = CliRunner().invoke(report_cli, ["--reports", str(reports)])
    assert result.exit_code == 0, result.output
    assert "fleet plant, 3 run(s), last 2026-11-30 02:32 UTC" in result.output
    html = (reports / "report.html").read_text()
    assert "Fixed (1)" in html and "Every check passed" in html
    out = reports / "elsewhere.html"
    two = CliRunner().invoke(
        report_cli, ["--reports", str(reports), "--fleet", "plant", "-o", str(out)]
    )
    assert two.exit_code == 0 and out.is_file()
    missing = CliRunner().invoke(report_cli, ["--reports", str(reports), "--fleet", "nope"])
    assert missing.exit_code == 2
    assert "no run of fleet nope in" in missing.output and "(fleets there: plant)" in missing.output


def test_a_broker_that_cannot_be_reached_is_one_card() -> None:
    down = run(1, broken=True)
    message = f"cannot reach {B2} over SSH: Connection refused"
    down.results = [
        r
        if r.host != B2 or r.outcome != "passed"
        else replace(r, outcome="failed", message=message)
        for r in down.results
    ]
    html = page.render([down])
    assert f"{B2}: 3 failed" in html and "3 checks failed the same way" in html
    assert html.count(message) == 1
    assert f"iotfleet check inventory/plant.py --limit {B2}</pre>" in html
    # The broker with one failure keeps its own card and -k command.
    assert f"{B1}: 1 failed" in html and "-k &#39;test_owner_and_mode[" in html
