"""No secret reaches pyinfra's output at any verbosity, nor ``--diff`` (issue 10).

A rollout at ``-vvv --diff`` (pyinfra's most talkative: meta, every command, every fact's
output, every file diff) that really writes the broker's secrets: the health identity's key and
password are removed from the broker and a client's password is rotated first, so the run has to
put a key, a password file and a password-holding options file in place.
"""

from __future__ import annotations

import re

import pytest

from iotfleet.fleet.paths import fleet_dir
from tests.integration.conftest import LabFactory
from tests.support.rollout import run_pyinfra
from tests.support.secret_scan import kept_secrets, leaks

pytestmark = pytest.mark.lab

ROTATED = "secrets/mqtt-password/wallboard"


def test_most_verbose_rollout_with_diff_shows_no_secret(lab_factory: LabFactory) -> None:
    lab = lab_factory(suite="bookworm", brokers=2)
    first = run_pyinfra(lab.name)
    assert first.returncode == 0, first.explain()
    state = fleet_dir(lab.name)
    (state / ROTATED).unlink()
    broker = lab.hosts[0]
    lab.ssh(broker, "rm -f /etc/iotfleet/health/client.key /etc/iotfleet/health/mosquitto_pub")

    rollout = run_pyinfra(lab.name, "deploy.py", "-vvv", "--diff")

    assert rollout.returncode == 0, rollout.explain()
    # The run did handle the secrets: it wrote the health key and options and new passwords.
    for secret_file in ("/etc/iotfleet/health/client.key", "/etc/iotfleet/health/mosquitto_pub"):
        said = re.search(
            rf"Will create {re.escape(secret_file)}\n\s+holds a secret: content not shown",
            rollout.output,
        )
        assert said, rollout.explain()
    assert "mosquitto is healthy (reload)" in rollout.output, rollout.explain()
    secrets = kept_secrets(state)
    assert ROTATED in secrets and len(secrets) >= 4, sorted(secrets)
    assert leaks(rollout.output, secrets) == []
