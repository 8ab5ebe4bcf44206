"""The nightly report on real lab brokers (issue 14): three runs of ``iotfleet check`` (good,
a key made 0644 on one broker, repaired by a rollout) make a history whose page, opened in
a real headless Chromium, shows the failure appearing and being fixed; the Prometheus
textfile of the broken run, served by a real node_exporter, says which broker failed."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.check.results import RunResults
from iotfleet.mosquitto import layout
from tests.integration.conftest import LabFactory, RunningLab
from tests.support.browser import Page, chromium
from tests.support.node_exporter import node_exporter, scrape
from tests.support.rollout import REPO, run_pyinfra

pytestmark = pytest.mark.lab

KEY_CHECK = "Keys, certificates, password file, ACL, CRL and config are root:mosquitto, not public"


@dataclass(frozen=True)
class Night:
    returncode: int
    output: str
    reports: Path
    results: RunResults


@dataclass
class Nights:
    lab: RunningLab
    root: Path
    runs: int = 0

    @property
    def history(self) -> Path:
        return self.root / "history"

    @property
    def metrics(self) -> Path:
        return self.root / "textfile" / "iotfleet-lab.prom"

    def iotfleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iotfleet", *args],
            cwd=REPO, env={**os.environ, "IOTFLEET_LAB": self.lab.name, "COLUMNS": "400"},
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    def check(self) -> Night:
        """One night: its own reports directory, the shared history, the textfile."""
        self.runs += 1
        reports = self.root / f"night-{self.runs}"
        result = self.iotfleet(
            "check", "inventory/lab.py", "--reports", str(reports),
            "--history", str(self.history), "--prometheus", str(self.metrics),
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert (reports / "results.json").is_file(), output
        return Night(result.returncode, output, reports, RunResults.load(reports / "results.json"))

    def rollout(self) -> None:
        rollout = run_pyinfra(self.lab.name)
        assert rollout.returncode == 0, rollout.explain()


@pytest.fixture(scope="module")
def nights(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Nights:
    nights = Nights(lab_factory(suite="bookworm", brokers=2), tmp_path_factory.mktemp("nights"))
    nights.rollout()
    return nights


def _points(browser: Page, chart: str, series: str) -> list[float]:
    circles = browser.all(f'svg#{chart} circle.point[data-series="{series}"]')
    return [float(c.get_attribute("data-y") or "nan") for c in circles]


def test_good_broken_repaired_nights_in_the_report(nights: Nights) -> None:
    broken_host = nights.lab.hosts[0].fqdn
    fine_host = nights.lab.hosts[1].fqdn
    good = nights.check()
    assert good.returncode == 0, good.output

    nights.lab.ssh(nights.lab.hosts[0], f"chmod 0644 {layout.SERVER_KEY}")
    broken = nights.check()
    assert broken.returncode == 1, broken.output
    failed = [(r.host, r.check) for r in broken.results.failed]
    assert failed == [(broken_host, KEY_CHECK)], broken.output
    with node_exporter(nights.metrics.parent) as url:
        samples = scrape(url)
    assert samples["node_textfile_scrape_error"] == 0
    fleet = broken.results.fleet
    assert samples[f'iotfleet_broker_compliant{{broker="{broken_host}",fleet="{fleet}"}}'] == 0
    assert samples[f'iotfleet_broker_compliant{{broker="{fine_host}",fleet="{fleet}"}}'] == 1
    check = (
        f'broker="{broken_host}",check="test_owner_and_mode",fleet="{fleet}",title="{KEY_CHECK}"'
    )
    assert samples[f"iotfleet_check_passed{{{check}}}"] == 0
    assert samples[f'iotfleet_check_last_run_success{{fleet="{fleet}"}}'] == 0
    certificate = broken.results.closest(broken_host, "certificate")
    assert certificate is not None
    labels = (
        f'broker="{broken_host}",certificate="broker certificate",fleet="{fleet}",'
        'kind="certificate"'
    )
    assert samples[f"iotfleet_certificate_not_after_timestamp_seconds{{{labels}}}"] == (
        certificate.at.timestamp()
    )
    assert samples[f"iotfleet_certificate_expiry_seconds{{{labels}}}"] > 300 * 86400
    # The PKI's own view of that broker's identity: the very certificate found on the broker.
    issued = next(
        i for i in broken.results.identities if (i.kind, i.name) == ("broker", broken_host)
    )
    assert issued.at == certificate.at
    pki = f'fleet="{fleet}",identity="{broken_host}",kind="broker"'
    assert samples[f"iotfleet_identity_not_after_timestamp_seconds{{{pki}}}"] == (
        issued.at.timestamp()
    )

    with chromium() as browser:
        browser.open(broken.reports / "report.html")
        rows = browser.all("#brokers tr.broker")
        assert [r.get_attribute("data-host") for r in rows] == [broken_host, fine_host]
        assert "FAILED" in rows[0].text
        card = browser.one("#failures article.failure")
        assert card.find_element("css selector", ".title").text.startswith(KEY_CHECK)
        assert f"{layout.SERVER_KEY} on {broken_host} is 0644 root:mosquitto" in card.text
        assert "Mosquitto 2.0." in browser.one("#summary").text
        assert "certificates and CRLs in the PKI on the control machine" in (
            browser.one("#identities").text
        )
        assert [li.text for li in browser.all("#new-failures li")] == [
            f"{KEY_CHECK} on {broken_host}, {layout.SERVER_KEY}"
        ]
        command = card.find_element("css selector", ".command").text.replace("\n", "")
        browser.screenshot("lab-night-broken")
    # The command the page gives shows that very failure again, and only it.
    argv = shlex.split(command)
    assert argv[:3] == ["iotfleet", "check", "inventory/lab.py"]
    again = nights.iotfleet(*argv[1:], "--reports", str(nights.root / "again"))
    assert again.returncode == 1, again.stdout + again.stderr
    assert "1 checks, 0 passed, 1 failed" in again.stdout, again.stdout

    nights.rollout()
    repaired = nights.check()
    assert repaired.returncode == 0, repaired.output
    with chromium() as browser:
        browser.open(repaired.reports / "report.html")
        assert "Every check passed on 2 brokers" in browser.one("#summary").text
        assert [li.text for li in browser.all("#fixed li")] == [
            f"{KEY_CHECK} on {broken_host}, {layout.SERVER_KEY}"
        ]
        assert browser.all("#new-failures") == []
        # The history: the failure appears in the second night and is gone in the third.
        assert _points(browser, "chart-checks", "failed") == [0, 1, 0]
        passed = _points(browser, "chart-checks", "passed")
        assert len(passed) == 3 and passed[1] == passed[0] - 1 == passed[2] - 1
        assert len(browser.all("svg#chart-runs circle.point")) == 3
        for host in (broken_host, fine_host):
            assert len(_points(browser, "chart-cert-days", host)) == 3
            crl = _points(browser, "chart-crl-days", host)
            assert len(crl) == 3 and all(days > 1 for days in crl)
        browser.screenshot("lab-night-repaired")
    # `iotfleet report` makes the same page from the history alone.
    rebuilt = nights.root / "rebuilt.html"
    made = nights.iotfleet("report", "--history", str(nights.history), "-o", str(rebuilt))
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"fleet {fleet}, 3 run(s)" in made.stdout
    assert "Fixed (1)" in rebuilt.read_text()
