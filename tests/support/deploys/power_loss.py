"""The brokers' rollout, with one broker losing power between two commands (a fault test).

``$IOTFLEET_TEST_POWER_LOSS`` = ``<host name>:<pid of that host's init>``. On that host the
first operation kills the host's init (the whole container dies, as in a power cut), waits
until the host is gone without letting pyinfra's SSH transport notice, then sends the next
command: the one that meets the dead connection. The other brokers get the real rollout.
"""

import os
import signal
from collections.abc import Generator
from typing import Any

from gevent.monkey import get_original  # type: ignore[import-untyped]
from pyinfra import host, local
from pyinfra.api import FunctionCommand, StringCommand, operation

VICTIM, _, INIT_PID = os.environ["IOTFLEET_TEST_POWER_LOSS"].partition(":")
# The blocking sleep: a gevent sleep would let the SSH transport read the EOF first.
_blocking_sleep = get_original("time", "sleep")


def _cut_power(state: object, host: object) -> bool:  # `state`, `host`: run inline, no greenlet
    pid = int(INIT_PID)
    os.kill(pid, signal.SIGKILL)
    for _ in range(300):  # the kernel tears the container down; its sockets send FIN
        if not os.path.exists(f"/proc/{pid}"):
            break
        _blocking_sleep(0.05)
    _blocking_sleep(1)  # the FIN is at this machine by now, not yet read by paramiko
    return True


@operation()
def power_loss_between_two_commands() -> Generator[Any, None, None]:
    """Cut the victim's power after one command, then send it the next one."""
    if host.name != VICTIM:
        host.noop("not the host that loses power")
        return
    yield StringCommand("true")
    yield FunctionCommand(_cut_power, (), {})
    yield StringCommand("true")


power_loss_between_two_commands(name="One broker loses power between two commands")
local.include("deploy/brokers.py")
