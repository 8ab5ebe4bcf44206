"""``iotfleet check``: plan from the inventory, SSH settings, scheduling, summary, exit codes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner
from rich.console import Console

from iotfleet.check.identities import ProbeCast
from iotfleet.check.plan import (
    PlanError,
    connect_name,
    limited_brokers,
    load_plan,
    plan_for,
    plan_from_hosts,
)
from iotfleet.check.results import CheckResult, RunResults, exit_code, render_summary
from iotfleet.check.runner import CheckRequest, pytest_argv, suite_dir
from iotfleet.check.ssh import host_alias, ssh_config_text
from iotfleet.check.suite import host_of_test, listener_applies
from iotfleet.cli.check import cli
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model import RawHost, build_fleet
from iotfleet.model.ssh import SshEndpoint, SshEndpointError, ssh_endpoint
from iotfleet.report import history
from tests.support.local_broker import free_port

REPO = Path(__file__).resolve().parents[2]


def test_ssh_config_has_exactly_the_inventory_settings(tmp_path: Path) -> None:
    endpoint = SshEndpoint(
        hostname="10.0.0.5",
        port=2222,
        user="admin",
        key="/keys/fleet key",
        known_hosts="/keys/known_hosts",
        strict_host_key_checking="yes",
    )
    text = ssh_config_text(host_alias("mqtt1.example"), endpoint, tmp_path)
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "Host iotfleet-mqtt1.example"
    for expected in (
        "HostName 10.0.0.5",
        "Port 2222",
        "User admin",
        'IdentityFile "/keys/fleet key"',
        "IdentitiesOnly yes",
        "UserKnownHostsFile /keys/known_hosts",
        "StrictHostKeyChecking yes",
        "BatchMode yes",
        "ControlMaster auto",
        f"ControlPath {tmp_path}/%C",
    ):
        assert expected in lines
    assert host_alias("@ssh/odd name") == "iotfleet-_ssh_odd_name"


def test_ssh_endpoint_follows_pyinfra_data_and_defaults() -> None:
    assert ssh_endpoint("mqtt1", {}) == SshEndpoint("mqtt1", 22, None, None, None, "accept-new")
    data = {"ssh_hostname": "10.0.0.5", "ssh_port": 2222, "ssh_user": "root", "ssh_key": "/k"}
    assert ssh_endpoint("mqtt1", data).port == 2222
    with pytest.raises(SshEndpointError, match="ssh_password is set"):
        ssh_endpoint("mqtt1", {"ssh_password": "x"})
    with pytest.raises(SshEndpointError, match="only hosts reached over SSH"):
        ssh_endpoint("@local", {})


def _fleet(*names: str) -> tuple[Any, dict[str, Any]]:
    data = {
        n: {"fleet_name": "unit", "ssh_hostname": f"192.0.2.{i}"} for i, n in enumerate(names, 1)
    }
    fleet = build_fleet([RawHost(n, ("brokers",), d) for n, d in data.items()])
    return fleet, data


def test_plan_limits_and_names() -> None:
    fleet, data = _fleet("mqtt1.example", "mqtt10.example")
    plan = plan_for(fleet, data, ["mqtt10.example"])
    assert [b.name for b in plan.brokers] == ["mqtt10.example"]
    assert plan.brokers[0].client_names == ("mqtt10.example", "192.0.2.2")
    with pytest.raises(PlanError, match="--limit mqtt2: selects no broker of this inventory"):
        plan_for(fleet, data, ["mqtt2"])
    # A name that does not resolve from here: probes use the address (also a SAN).
    assert plan.brokers[0].connect_name == "192.0.2.2"
    broker = plan.brokers[0].model
    assert connect_name(broker, ["localhost", "127.0.0.1"]) == "localhost"


def test_limit_takes_groups_and_globs_like_pyinfra() -> None:
    hosts = [
        RawHost("mqtt1.plant-a", ("brokers", "plant_a"), {"fleet_name": "unit"}),
        RawHost("mqtt2.plant-a", ("brokers", "plant_a"), {"fleet_name": "unit"}),
        RawHost("mqtt1.plant-b", ("brokers", "plant_b"), {"fleet_name": "unit"}),
        RawHost("@local", ("flash_stations",), {"fleet_name": "unit"}),
    ]
    fleet = build_fleet(hosts)
    groups = {h.name: h.groups for h in hosts}

    def chosen(*limit: str) -> list[str]:
        return [b.name for b in limited_brokers(fleet, groups, limit)]

    assert chosen() == ["mqtt1.plant-a", "mqtt2.plant-a", "mqtt1.plant-b"]
    assert chosen("plant_b") == ["mqtt1.plant-b"]
    assert chosen("brokers") == chosen()
    assert chosen("mqtt1.*") == ["mqtt1.plant-a", "mqtt1.plant-b"]
    assert chosen("plant_b", "mqtt2.plant-a") == ["mqtt2.plant-a", "mqtt1.plant-b"]
    # A group without brokers, a typo: named, with what exists.
    with pytest.raises(PlanError, match=r"--limit flash_stations, plant_c: selects no broker"):
        chosen("flash_stations", "plant_c", "plant_a")
    plan = plan_from_hosts(hosts, ["plant_a"])
    assert [b.name for b in plan.brokers] == ["mqtt1.plant-a", "mqtt2.plant-a"]


def test_every_check_of_a_broker_is_scheduled_together() -> None:
    hosts = ["b1", "b10", "b1.example"]
    assert host_of_test("t.py::test_x[b1]", hosts) == "b1"
    assert host_of_test("t.py::test_x[b10:8883]", hosts) == "b10"
    assert host_of_test("t.py::test_x[b1.example:8883-revoked]", hosts) == "b1.example"
    assert host_of_test("t.py::test_x[b1:/etc/mosquitto/acl]", hosts) == "b1"
    assert host_of_test("t.py::test_other", hosts) == "t.py::test_other"


def test_listener_kinds() -> None:
    from iotfleet.check.plan import ListenerTarget
    from iotfleet.model import Listener

    cast = ProbeCast(device="d1", peer=None, password_user=None, two_factor_user=None)
    cert = ListenerTarget("b1", "b1", Listener(port=8883))
    local = ListenerTarget(
        "b1", "b1", Listener(port=1883, bind_address="127.0.0.1", tls=False, auth="password")
    )
    assert listener_applies("device", cert, cast) and listener_applies("tls", cert, cast)
    assert not listener_applies("password-user", cert, cast)
    assert listener_applies("all", local, cast) and not listener_applies("reachable", local, cast)
    assert not listener_applies("tls-configured", local, cast)


def _results() -> RunResults:
    return RunResults(
        "inventory/plant-a.py",
        [
            CheckResult(
                "mqtt1",
                "Anonymous clients are refused",
                "mqtt1:8884",
                "failed",
                "anonymous client accepted on mqtt1:8884",
                ("mqtt", "outside"),
            ),
            CheckResult("mqtt1", "Firewall", "mqtt1", "passed"),
            CheckResult(
                "mqtt2",
                "Wrong passwords are refused",
                "mqtt2",
                "not applicable",
                "mqtt2 has no reachable listener that checks passwords",
            ),
            CheckResult("mqtt2", "Firewall", "mqtt2", "passed"),
        ],
        {"mqtt1": {"mosquitto_version": "2.0.11"}},
    )


def test_summary_names_each_failed_check_by_host(tmp_path: Path) -> None:
    run = _results()
    out = io.StringIO()
    render_summary(run, Console(file=out, width=200), reports=[tmp_path / "junit.xml"])
    text = out.getvalue()
    assert text.startswith(
        "FAIL compliance of inventory/plant-a.py: 2 broker(s), 4 checks, 2 passed, 1 failed, "
        "1 not applicable"
    )
    assert "✗ mqtt1 (Mosquitto 2.0.11): 1 of 2 checks failed" in text
    assert "anonymous client accepted on mqtt1:8884" in text
    assert "✓ mqtt2: all 1 applicable checks passed" in text
    assert "not applicable: Wrong passwords are refused (host): mqtt2 has no reachable" in text
    assert f"Reports: {tmp_path / 'junit.xml'}" in text
    assert exit_code(run) == 1
    run.results = [r for r in run.results if r.outcome != "failed"]
    assert exit_code(run) == 0
    run.save(tmp_path / "results.json")
    assert RunResults.load(tmp_path / "results.json") == run


def test_pytest_command_line(tmp_path: Path) -> None:
    request = CheckRequest(
        Path("inventory/lab.py"), tmp_path, markexpr="mqtt", keyword="8883", limit=("b1",)
    )
    argv = pytest_argv(request, 3, tmp_path / "dump.json")
    assert argv[1:5] == ["-m", "pytest", "--pyargs", "iotfleet.compliance"]
    # The installed suite, wherever it is (a checkout or a wheel), with its own pytest ini.
    suite = suite_dir()
    assert suite is not None and (suite / "plugin.py").is_file()
    assert argv[argv.index("--rootdir") + 1] == str(suite)
    assert Path(argv[argv.index("-c") + 1]).parent == tmp_path
    assert argv[argv.index("--inventory") + 1] == str(Path("inventory/lab.py").resolve())
    assert argv[argv.index("-n") + 1] == "3"
    assert argv[argv.index("mqtt") - 1 : argv.index("mqtt") + 1] == ["-m", "mqtt"]
    assert "--limit" in argv and "-k" in argv
    assert argv[argv.index("--junitxml") + 1] == str(tmp_path / "junit.xml")
    # The nested pytest keeps to its private directory: it must not prune the caller's.
    assert Path(argv[argv.index("--basetemp") + 1]).parent == tmp_path
    assert "-n" not in pytest_argv(request, 1, tmp_path / "dump.json")


# -- the real command --------------------------------------------------------------------------


def _write_inventory(tmp_path: Path, listener_port: int) -> Path:
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(
        'fleet_name = "clitest"\nfleet_devices = [{"id": "d1"}, {"id": "d2"}]\n'
    )
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        "brokers = [('mqtt1.test', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1, "
        "'ssh_strict_host_key_checking': 'no', 'mosquitto_dns_names': ['localhost'], "
        f"'mosquitto_listeners': [{{'port': {listener_port}}}]}})]\n"
    )
    return inventory


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IOTFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IOTFLEET_PKI_PASSPHRASE", "unit-test-passphrase-0123")
    monkeypatch.setenv("COLUMNS", "300")
    return tmp_path / "home"


def test_usage_and_inventory_errors_exit_2(tmp_path: Path, home: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, [str(tmp_path / "nope.py")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    inventory = _write_inventory(tmp_path, 70000)
    invalid = runner.invoke(cli, [str(inventory), "--reports", str(tmp_path / "r")])
    assert invalid.exit_code == 2
    assert "host mqtt1.test: mosquitto_listeners[0].port" in invalid.output


def test_a_fleet_without_pki_is_an_error(tmp_path: Path, home: Path) -> None:
    inventory = _write_inventory(tmp_path, free_port())
    result = CliRunner().invoke(cli, [str(inventory), "--reports", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "fleet clitest has no PKI yet: run a rollout first" in result.output


def test_an_unreachable_broker_fails_every_check_quickly(tmp_path: Path, home: Path) -> None:
    inventory = _write_inventory(tmp_path, free_port())
    fleet = load_plan(inventory).fleet
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    reports = tmp_path / "reports"
    metrics = tmp_path / "textfile" / "iotfleet.prom"
    result = CliRunner().invoke(
        cli, [str(inventory), "--reports", str(reports), "--prometheus", str(metrics)]
    )
    assert result.exit_code == 1, result.output
    assert "✗ mqtt1.test" in result.output
    assert "cannot reach mqtt1.test over SSH" in result.output
    assert "does not answer" in result.output
    run = RunResults.load(reports / "results.json")
    assert {r.outcome for r in run.results} == {"failed", "not applicable"}
    assert {r.message for r in run.results if r.outcome == "not applicable"} == {
        "mqtt1.test has no listener that checks passwords",
        "mqtt1.test has no reachable listener that checks passwords",
        "mqtt1.test has no reachable password listener and an active user with that password",
        "ssh_hardening_enabled is false for mqtt1.test",
        "mqtt1.test has no reachable listener that takes passwords without certificates",
        "mqtt1.test has no reachable listener that requires a certificate and a password",
        "the fleet has no sites (fleet_sites): no bridges",
    }
    assert run.fleet == "clitest" and run.inventory == str(inventory) and run.duration > 0
    # JUnit XML for CI: one test case per result, each naming its host and check.
    cases = ElementTree.parse(reports / "junit.xml").getroot().iter("testcase")  # noqa: S314 - ours
    properties = [{p.get("name"): p.get("value") for p in c.iter("property")} for c in cases]
    assert len(properties) == len(run.results)
    assert all(p["host"] == "mqtt1.test" and p["check"] for p in properties)
    # The run is in the history, the page and the metrics.
    assert [r.started for r in history.load(reports / "history", "clitest")] == [run.started]
    page = (reports / "report.html").read_text()
    assert "FAILED" in page and "cannot reach mqtt1.test over SSH" in page
    assert 'iotfleet_broker_compliant{fleet="clitest",broker="mqtt1.test"} 0' in (
        metrics.read_text()
    )
    assert f"Metrics: {metrics}" in result.output
    bad = CliRunner().invoke(cli, [str(inventory), "--prometheus", str(tmp_path / "m.txt")])
    assert bad.exit_code == 2 and "node_exporter reads only *.prom files" in bad.output
    # Metrics that cannot be written: the summary is still printed, and the run fails.
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "iotfleet.prom"
    broken = CliRunner().invoke(
        cli, [str(inventory), "--reports", str(reports), "--prometheus", str(unwritable)]
    )
    assert broken.exit_code == 1 and "✗ mqtt1.test" in broken.output
    assert (
        f"the report or the metrics could not be written: cannot write {unwritable}: File exists"
        in " ".join(broken.output.split())
    ), broken.output
    assert "Traceback" not in broken.output


def test_the_suite_needs_an_inventory() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/compliance", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the compliance suite needs --inventory INVENTORY" in result.stderr
