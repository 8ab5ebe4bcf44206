"""Waiting for something a test set in motion (a broker's answer, a gateway's reconnect).

The deadline bounds a hang, it does not measure speed: a condition that never comes true
fails the test by name; how fast it comes true is for bench/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(condition: Callable[[], bool], timeout: float = 30, poll: float = 0.05) -> None:
    """Return once ``condition()`` is true; fail the test if it is still false after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout:g} s: {condition.__doc__ or condition}")
        time.sleep(poll)


def returns_within(call: Callable[[], T], timeout: float = 120) -> T:
    """``call()``'s result; fail the test if it has not returned after ``timeout`` seconds (a
    hang, not slowness: the bound is generous)."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        pytest.fail(f"still running after {timeout:g} s: {call}")
    finally:
        pool.shutdown(wait=False)
