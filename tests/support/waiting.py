"""Waiting for something a test set in motion (a broker's answer, a gateway's reconnect).

The deadline bounds a hang, it does not measure speed: a condition that never comes true
fails the test by name; how fast it comes true is for bench/.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(condition: Callable[[], bool], timeout: float = 30, poll: float = 0.05) -> None:
    """Return once ``condition()`` is true; fail the test if it is still false after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout:g} s: {condition.__doc__ or condition}")
        time.sleep(poll)
