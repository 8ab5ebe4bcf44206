"""Plan, then commit, with the real pyinfra CLI on the bookworm lab (issue 11).

`pyinfra --dry`, a declined prompt and a run refused before its first operation leave the fleet's
state directory byte-identical (every file hashed before and after), on a fresh fleet and on an
existing fleet with a device removed; the next real run then does what the dry run printed.
`iotfleet check` and `iotfleet pki status` change nothing. Two rollouts started together end
consistent. The fleet here is a fresh one on the shared lab (``--data fleet_name=...``); the
module ends by rolling the lab's own fleet out again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.check.mqtt_probe import try_connect
from iotfleet.fleet.inventory import OVERRIDE_DATA_ENV
from iotfleet.fleet.paths import fleet_dir
from iotfleet.mosquitto import layout
from iotfleet.pki import PkiStore
from tests.integration.conftest import LabFactory, RunningLab
from tests.support.broker_clients import identity_of, target
from tests.support.lab_fleet import lab_context
from tests.support.rollout import PYINFRA, REPO, Rollout, run_iotfleet, run_pyinfra
from tests.support.waiting import wait_until

pytestmark = pytest.mark.lab

_PLAN = re.compile(r"PKI of fleet (\S+) \(plan\): (.*)")


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content digest and mode, directories by mode."""
    if not root.exists():
        return {}
    entries = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if path.is_file():
            entries[key] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {info.st_mode:o}"
        else:
            entries[key + "/"] = f"{info.st_mode:o}"
    return entries


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Iterator[RunningLab]:
    lab = lab_factory(suite="bookworm", brokers=2)
    yield lab
    # Leave the shared lab serving its own fleet again.
    restored = run_pyinfra(lab.name)
    assert restored.returncode == 0, restored.explain()


@pytest.fixture(scope="module")
def fresh(lab: RunningLab) -> Iterator[str]:
    name = f"{lab.name}-plan"
    shutil.rmtree(fleet_dir(name), ignore_errors=True)
    yield name
    shutil.rmtree(fleet_dir(name), ignore_errors=True)


def _devices(lab: RunningLab) -> list[dict[str, object]]:
    return [
        {"id": d.id, "group": d.group, **({"revoked": d.revoked} if d.revoked else {})}
        for d in lab_context(lab.name).fleet.devices
    ]


def _data(fleet: str, devices: list[dict[str, object]] | None = None) -> list[str]:
    args = ["--data", f"fleet_name={fleet}"]
    if devices is not None:
        args += ["--data", f"fleet_devices={json.dumps(devices)}"]
    return args


def _declined(lab: RunningLab, data: list[str]) -> subprocess.CompletedProcess[str]:
    """pyinfra without -y, answering the prompt with something other than enter."""
    return subprocess.run(
        [PYINFRA, *data, "inventory/lab.py", "deploy.py"],
        cwd=REPO,
        env={**os.environ, "IOTFLEET_LAB": lab.name},
        input="no\n",
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _plan_line(output: str, fleet: str) -> str:
    lines = [m.group(2) for m in _PLAN.finditer(output) if m.group(1) == fleet]
    assert lines, output[-4000:]
    return lines[0]


def _issued_count(plan: str) -> int:
    match = re.search(r"\bissue (\d+)\b", plan)
    return int(match.group(1)) if match else 0


def test_dry_and_declined_runs_of_a_fresh_fleet_write_nothing(lab: RunningLab, fresh: str) -> None:
    state = fleet_dir(fresh)
    dry = run_pyinfra(lab.name, "deploy.py", "--dry", *_data(fresh))
    assert dry.returncode == 0, dry.explain()
    plan = _plan_line(dry.output, fresh)
    assert plan.startswith("create CA, issue "), plan
    assert "re-sign CRL" in plan and "generate" in plan, plan
    assert _snapshot(state) == {}, "pyinfra --dry wrote fleet state"

    declined = _declined(lab, _data(fresh))
    output = declined.stdout + declined.stderr
    assert "Unexpected user input" in output, output[-3000:]
    assert f"PKI of fleet {fresh}: create CA" in output, "the prompt did not list the commit"
    assert _snapshot(state) == {}, "a declined prompt wrote fleet state"

    refused = run_pyinfra(lab.name, "deploy.py", *_data(fresh), "--data", "mosquitto_listeners=7")
    assert refused.returncode != 0 and "mosquitto_listeners" in refused.output, refused.explain()
    assert _snapshot(state) == {}, "a run refused before its first operation wrote fleet state"

    # The real run does what the dry run printed, and lists it as its first operation.
    real = run_pyinfra(lab.name, "deploy.py", *_data(fresh))
    assert real.returncode == 0, real.explain()
    assert _plan_line(real.output, fresh) == plan
    assert f"PKI of fleet {fresh}: create CA" in real.output
    store = PkiStore(state / "pki")
    assert len([r for r in store.records() if r.status != "revoked"]) == _issued_count(plan)
    # And the brokers serve the fresh fleet's certificates.
    with _fleet_env(fresh):
        ctx = lab_context(lab.name)
    assert ctx.fleet.name == fresh
    for host in lab.hosts:
        assert try_connect(target(ctx, host.fqdn, 8883), identity_of(ctx, "ops")).accepted


def test_a_dry_run_with_a_device_removed_revokes_nothing(lab: RunningLab, fresh: str) -> None:
    state = fleet_dir(fresh)
    devices = _devices(lab)
    removed = next(d for d in devices if d["id"] == "sensor-2")
    kept = [d for d in devices if d is not removed]
    before = _snapshot(state)
    assert before, "the fresh fleet was not rolled out by the previous test"

    dry = run_pyinfra(lab.name, "deploy.py", "--dry", *_data(fresh, kept))
    assert dry.returncode == 0, dry.explain()
    plan = _plan_line(dry.output, fresh)
    assert "revoke sensor-2 (cessationOfOperation)" in plan, plan
    assert _snapshot(state) == before, "pyinfra --dry revoked a device"
    declined = _declined(lab, _data(fresh, kept))
    assert "Unexpected user input" in declined.stdout + declined.stderr
    assert _snapshot(state) == before, "a declined prompt revoked a device"
    assert PkiStore(state / "pki").record("sensor-2").status == "valid"  # type: ignore[union-attr]

    real = run_pyinfra(lab.name, "deploy.py", *_data(fresh, kept))
    assert real.returncode == 0, real.explain()
    assert "revoke sensor-2 (cessationOfOperation)" in _plan_line(real.output, fresh)
    assert PkiStore(state / "pki").record("sensor-2").status == "revoked"  # type: ignore[union-attr]


def test_check_and_pki_status_change_nothing(lab: RunningLab, fresh: str) -> None:
    state = fleet_dir(fresh)
    kept = [d for d in _devices(lab) if d["id"] != "sensor-2"]
    before = _snapshot(state)
    with _fleet_env(fresh, kept):
        status = run_iotfleet("pki", "status", "-i", "inventory/lab.py", lab_name=lab.name)
        assert status.returncode == 0, status.stdout + status.stderr
        check = run_iotfleet(
            "check", "inventory/lab.py", "--limit", lab.hosts[0].fqdn, "--reports",
            str(state.parent / f"{fresh}-reports"), lab_name=lab.name, timeout=1200,
        )  # fmt: skip
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]
    assert _snapshot(state) == before, "iotfleet check or pki status changed the fleet state"
    shutil.rmtree(state.parent / f"{fresh}-reports", ignore_errors=True)


def test_diff_shows_what_changes_in_each_broker_file_and_never_a_secret(
    lab: RunningLab, fresh: str
) -> None:
    state = fleet_dir(fresh)
    kept = [d for d in _devices(lab) if d["id"] != "sensor-2"]
    clients = [
        *_clients(lab),
        {"name": "diffwall", "roles": ["dashboard"], "auth": "password", "password": "generated"},
    ]
    before = _snapshot(state)
    data = [*_data(fresh, kept), "--data", f"fleet_clients={json.dumps(clients)}"]
    # Without -y: pyinfra renders each operation's changes only when it detects changes.
    diff = subprocess.run(
        [PYINFRA, "--dry", "--diff", "-vv", *data, "inventory/lab.py", "deploy.py"],
        cwd=REPO, env={**os.environ, "IOTFLEET_LAB": lab.name}, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    out = diff.stdout + diff.stderr
    assert diff.returncode == 0, out[-5000:]
    assert f"Will modify {layout.ACL_FILE}" in _plain(out), out[-5000:]
    assert "user diffwall" in out  # the ACL's new block, as a line diff
    assert "+ diffwall (password set, hash not shown)" in out, out[-5000:]
    # Nothing secret: no hash, no key, none of the fleet's passwords.
    assert "$7$" not in out and "PRIVATE KEY" not in out
    for secret in (state / "secrets").rglob("*"):
        if secret.is_file():
            assert secret.read_text().strip() not in out, f"{secret.name} leaked into --diff"
    assert _snapshot(state) == before, "pyinfra --dry --diff wrote fleet state"


def _clients(lab: RunningLab) -> list[dict[str, object]]:
    """The lab's clients as inventory data (secrets as their references)."""
    clients = []
    for client in lab_context(lab.name).fleet.clients:
        entry = client.model_dump(mode="json", exclude_defaults=True, exclude={"password"})
        if client.password is not None:
            ref = client.password
            entry["password"] = ref.kind if ref.kind == "generated" else f"{ref.kind}:{ref.target}"
        clients.append(entry)
    return clients


def _plain(text: str) -> str:
    """pyinfra's output without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


MISTAKES = {
    "a key-prefix typo": (["--data", "mosquito_persistence=false"], "mosquito_persistence"),
    "another prefix typo": (["--data", "firewal_enabled=false"], "firewal_enabled"),
    "a loose boolean": (["--data", "mosquitto_persistence=no"], "mosquitto_persistence"),
    "a fleet name that escapes": (["--data", "fleet_name=../../etc"], "fleet_name"),
    "two devices with one MAC": (
        [
            "--data",
            'fleet_devices=[{"id": "gw-a", "mac": "18:FE:34:00:00:01"},'
            ' {"id": "gw-b", "mac": "18:fe:34:00:00:01"}]',
        ],
        "mac",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_inventory_mistakes_are_refused_before_anything_is_touched(
    lab: RunningLab, fresh: str, mistake: str
) -> None:
    data, key = MISTAKES[mistake]
    state = fleet_dir(fresh)
    before, live_before = _snapshot(state), _live_files(lab)
    refused = run_pyinfra(lab.name, "deploy.py", *_data(fresh), *data)
    said = _plain(refused.output)
    assert refused.returncode != 0, refused.explain()
    assert key in said and "Traceback" not in said, said[-3000:]
    assert "Beginning operation run" not in said, "operations ran after an inventory mistake"
    assert _snapshot(state) == before and _live_files(lab) == live_before


def _live_files(lab: RunningLab) -> dict[str, str]:
    """Digests of every broker's Mosquitto configuration, as it is live."""
    return {
        host.name: lab.ssh(host, f"find {layout.CONFIG_DIR} -type f -exec sha256sum {{}} +").stdout
        for host in lab.hosts
    }


def test_a_fleet_never_rolled_out_is_a_clear_error_for_read_only_commands(
    lab: RunningLab,
) -> None:
    never = f"{lab.name}-never"
    shutil.rmtree(fleet_dir(never), ignore_errors=True)
    with _fleet_env(never):
        check = run_iotfleet("check", "inventory/lab.py", lab_name=lab.name)
        status = run_iotfleet("pki", "status", "-i", "inventory/lab.py", lab_name=lab.name)
    said = " ".join((check.stdout + check.stderr).split())  # rich wraps long lines
    assert check.returncode != 0 and "run a rollout first" in said, said
    assert "Traceback" not in said
    assert status.returncode != 0 and "Traceback" not in status.stdout + status.stderr
    assert not fleet_dir(never).exists(), "a read-only command created fleet state"


def test_two_rollouts_started_together_end_consistent(lab: RunningLab, fresh: str) -> None:
    state = fleet_dir(fresh)
    kept = [d for d in _devices(lab) if d["id"] not in ("sensor-2", "sensor-1")]
    argv = [PYINFRA, "-y", *_data(fresh, kept), "inventory/lab.py", "deploy.py"]
    env = {**os.environ, "IOTFLEET_LAB": lab.name}
    runs = [
        subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    codes = [run.returncode for run in runs]
    assert 0 in codes, outputs
    for code, output in zip(codes, outputs, strict=True):
        if code != 0:  # the loser says why, and wrote nothing of its own plan
            assert "another iotfleet run" in output or "changed since this run planned" in output, (
                output[-4000:]
            )
    store = PkiStore(state / "pki")
    assert store.record("sensor-1").status == "revoked"  # type: ignore[union-attr]
    # One valid certificate per identity, and the next run converges with nothing to do.
    valid = [r.name for r in store.records() if r.status == "valid"]
    assert len(valid) == len(set(valid))
    again = run_pyinfra(lab.name, "deploy.py", *_data(fresh, kept))
    assert again.returncode == 0, again.explain()
    again_plan = _plan_line(again.output, fresh)
    assert again_plan == "no change", again_plan
    assert (again.changed, again.errors) == (0, 0), again.explain()


def test_a_rollout_after_the_pki_tier_alone_is_then_unchanged(lab: RunningLab) -> None:
    # deploy/pki.py enrolls the PKI only; the rollout after it has no PKI change to commit,
    # yet must keep what it generated (the brokers' health-check passwords): the next rollout
    # then changes nothing on any broker.
    fleet = f"{lab.name}-pkifirst"
    shutil.rmtree(fleet_dir(fleet), ignore_errors=True)
    try:
        pki = run_pyinfra(lab.name, "deploy/pki.py", *_data(fleet))
        assert pki.returncode == 0, pki.explain()
        first = run_pyinfra(lab.name, "deploy.py", *_data(fleet))
        assert first.returncode == 0, first.explain()
        again = run_pyinfra(lab.name, "deploy.py", *_data(fleet))
        assert again.returncode == 0, again.explain()
        assert _plan_line(again.output, fleet) == "no change"
        assert (again.changed, again.errors) == (0, 0), again.explain()
    finally:
        shutil.rmtree(fleet_dir(fleet), ignore_errors=True)


def test_a_no_change_plan_is_checked_again_before_it_runs(lab: RunningLab, fresh: str) -> None:
    """A run plans "no change", waits at its prompt; meanwhile another run revokes a device and
    pushes the new CRL. Answered yes, the first run must not push its stale files (which would
    let the revoked device in again): it stops before its first operation."""
    victim = "sensor-3"
    without_victim = [d for d in _devices(lab) if d["id"] not in ("sensor-2", "sensor-1")]
    kept: list[dict[str, object]] = [*without_victim, {"id": victim, "group": "software"}]
    issued = run_pyinfra(lab.name, "deploy.py", *_data(fresh, kept))
    assert issued.returncode == 0, issued.explain()
    with _fleet_env(fresh, kept):
        ctx = lab_context(lab.name)
        victim_identity = identity_of(ctx, victim)
    broker = target(ctx, lab.hosts[0].fqdn, 8883)
    assert try_connect(broker, victim_identity).accepted, "the victim device cannot connect yet"

    waiting = subprocess.Popen(
        [PYINFRA, *_data(fresh, kept), "inventory/lab.py", "deploy.py"],
        cwd=REPO, env={**os.environ, "IOTFLEET_LAB": lab.name}, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    said: list[str] = []
    out = waiting.stdout
    assert out is not None
    # Read by character: the prompt ends without a newline.
    reader = threading.Thread(target=lambda: said.extend(iter(lambda: out.read(1), "")))
    reader.start()
    try:
        wait_until(lambda: "skip this step with -y" in "".join(said), timeout=900)
        assert _plan_line("".join(said), fresh) == "no change"
        revoking = run_pyinfra(lab.name, "deploy.py", *_data(fresh, without_victim))
        assert revoking.returncode == 0, revoking.explain()
        assert not try_connect(broker, victim_identity).accepted, "the revocation did not reach"
        # pyinfra executes on enter. (Not communicate(): it would read the output the reader
        # thread is reading.)
        assert waiting.stdin is not None
        waiting.stdin.write("\n")
        waiting.stdin.close()
        waiting.wait(timeout=900)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        reader.join()
    output = _plain("".join(said))
    assert waiting.returncode != 0, output[-4000:]
    assert "changed since this run planned" in output, output[-4000:]
    assert "Traceback" not in output
    assert not try_connect(broker, victim_identity).accepted, "a stale run let a revoked device in"


class _fleet_env:  # noqa: N801 (used as a context manager)
    """Point the inventory of this process and its children at another fleet name."""

    def __init__(self, fleet: str, devices: list[dict[str, object]] | None = None) -> None:
        data: dict[str, object] = {"fleet_name": fleet}
        if devices is not None:
            data["fleet_devices"] = devices
        self._value = json.dumps(data)
        self._previous: str | None = None

    def __enter__(self) -> None:
        self._previous = os.environ.get(OVERRIDE_DATA_ENV)
        os.environ[OVERRIDE_DATA_ENV] = self._value

    def __exit__(self, *_: object) -> None:
        if self._previous is None:
            os.environ.pop(OVERRIDE_DATA_ENV, None)
        else:
            os.environ[OVERRIDE_DATA_ENV] = self._previous


__all__ = ["Rollout"]
