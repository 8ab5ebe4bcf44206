"""The alert rules of files/prometheus/ checked by Debian's promtool and fired, by
``promtool test rules``, on the metrics ``iotfleet check --prometheus`` writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iotfleet.check.results import Expiry, Identity
from iotfleet.report.prometheus import textfile
from tests.support.report_runs import B1, B2, KEY_TITLE, run

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "files" / "prometheus" / "iotfleet-alerts.yml"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # promtool's clock starts here


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("promtool"):
        pytest.fail("needs Debian's prometheus (promtool): scripts/install-system-deps.sh")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def _series(text: str, hours: int) -> list[dict[str, str]]:
    """The textfile's samples as promtool input series, unchanged for ``hours``."""
    return [
        {"series": line.rsplit(" ", 1)[0], "values": f"{line.rsplit(' ', 1)[1]}x{hours}"}
        for line in text.splitlines()
        if line and not line.startswith("#")
    ]


def _alert(name: str, at: str, *expected: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {"exp_labels": labels, "exp_annotations": {"summary": summary}}
            for labels, summary in expected
        ],
    }


def test_alerts_fire_on_iotfleets_metrics(tmp_path: Path) -> None:
    broken = run(1, broken=True)
    broken.started = EPOCH  # a run at promtool's time 0
    broken.expiries = [
        Expiry(B1, "certificate", "broker certificate", EPOCH + timedelta(days=10)),
        Expiry(B2, "certificate", "broker certificate", EPOCH + timedelta(days=120)),
        Expiry(B1, "crl", "CRL", EPOCH + timedelta(hours=12)),
        Expiry(B2, "crl", "CRL", EPOCH + timedelta(days=5)),
    ]
    # promtool compares every annotation: the summaries are checked, the long descriptions
    # are left out of the copy under test.
    rules = tmp_path / "rules.yml"
    text = RULES.read_text()
    rules.write_text(re.sub(r"\n {10}description: >-\n(?: {12}.*\n)+", "\n", text))
    assert "description" not in rules.read_text() and text.count("description: >-") == 7
    broken.identities = [
        Identity("crl", "crl", EPOCH + timedelta(hours=12), "ok"),
        Identity("device", "sensor-007", EPOCH + timedelta(days=13), "renew"),
        Identity("device", "sensor-008", EPOCH + timedelta(days=15), "renew"),
    ]
    fleet = {"fleet": "plant"}
    warning, critical = {"severity": "warning"}, {"severity": "critical"}
    certificate = {"kind": "certificate", "certificate": "broker certificate"}
    failed = {"broker": B1, "check": "test_owner_and_mode", "title": KEY_TITLE}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1h",
                "input_series": _series(textfile(broken), 40),
                "alert_rule_test": [
                    _alert(
                        "IotfleetComplianceCheckFailed",
                        "1h",
                        ({**fleet, **warning, **failed}, f"{B1}: {KEY_TITLE}"),
                    ),
                    _alert(
                        "IotfleetBrokerCertificateExpiresSoon",
                        "1h",
                        (
                            {**fleet, **warning, **certificate, "broker": B1},
                            f"{B1}: broker certificate expires in 9d 23h 0m 0s",
                        ),
                    ),
                    _alert("IotfleetBrokerCertificateExpired", "1h"),
                    # sensor-008 is 15 days out (and a CRL is no identity here).
                    _alert(
                        "IotfleetIdentityExpiresSoon",
                        "1h",
                        (
                            {**fleet, **warning, "kind": "device", "identity": "sensor-007"},
                            "device sensor-007 expires in 12d 23h 0m 0s",
                        ),
                    ),
                    _alert(
                        "IotfleetCrlNextUpdateSoon",
                        "1h",
                        (
                            {**fleet, **warning, "broker": B1},
                            f"{B1}: the CRL reaches nextUpdate in 11h 0m 0s",
                        ),
                    ),
                    _alert("IotfleetCrlExpired", "11h"),
                    _alert(
                        "IotfleetCrlExpired",
                        "13h",
                        ({**fleet, **critical, "broker": B1}, f"{B1}: the CRL is past nextUpdate"),
                    ),
                    _alert("IotfleetComplianceRunMissing", "25h"),
                    _alert(
                        "IotfleetComplianceRunMissing",
                        "27h",
                        ({**fleet, **warning}, "fleet plant: no compliance run for 1d 3h 0m 0s"),
                    ),
                ],
            }
        ],
    }
    spec = tmp_path / "alerts-test.yml"
    spec.write_text(json.dumps(tests))  # JSON is YAML
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
