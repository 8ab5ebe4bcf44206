"""The fleet of a running lab, loaded the way the rollout loads it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from iotfleet.check.plan import read_inventory
from iotfleet.fleet.context import FleetContext
from iotfleet.model import build_fleet
from tests.support.rollout import REPO


@contextmanager
def lab_environment(lab_name: str) -> Iterator[None]:
    previous = os.environ.get("IOTFLEET_LAB")
    os.environ["IOTFLEET_LAB"] = lab_name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("IOTFLEET_LAB", None)
        else:
            os.environ["IOTFLEET_LAB"] = previous


def lab_context(lab_name: str) -> FleetContext:
    """Validated fleet, PKI store and resolved passwords of the lab ``lab_name``.

    pyinfra's loader runs in a child process: importing pyinfra_cli monkey-patches this process
    with gevent, which deadlocks on imports when other threads are alive (as in a test run).
    """
    with lab_environment(lab_name):
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            hosts = read_inventory(REPO / "inventory" / "lab.py")
        finally:
            os.chdir(cwd)
        return FleetContext.for_fleet(build_fleet(hosts))
