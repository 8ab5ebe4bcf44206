"""Fixes to pyinfra that iotfleet carries until upstream has them; applied when ``roles`` loads.

1. A host lost between two commands fails that host only. paramiko raises ``EOFError`` from
   ``open_session`` once the transport saw the connection close (the host was killed, sshd
   stopped, the network cut); pyinfra catches ``OSError``/``SSHException`` around every command
   and fact but not ``EOFError``, so one lost host ended the whole rollout with "An internal
   exception occurred: EOFError" and the other hosts never got the change (upstream:
   pyinfra-dev/pyinfra#1220, open). The host's commands now raise :class:`HostConnectionLost`
   (an ``SSHException``), which pyinfra reports as that host's error and fails that host.
   The results end with one line naming every failed host (the table only counts them).
   The same fix in pyinfra's SSH connector, as a patch to offer upstream, is in docs/upstream/.
2. Ctrl-C ends a rollout with exit status 130. ``pyinfra_cli.main`` installs a SIGINT handler
   that prints "Exiting upon user request!" and exits 0, so a script or CI job could not tell
   an interrupted rollout from a finished one.

3. Each operation's position is found by walking the call's frames, not ``inspect.stack()``.
   pyinfra orders operations by the line numbers of the deploy code that added them
   (``get_operation_order_from_stack``), which it took from ``inspect.stack()``: that builds a
   FrameInfo for every frame, reading source lines from disk for each, about 9 ms per operation
   at a roles' call depth on a busy 2-core machine (over 1 s of CPU per 20-broker run). The same
   line numbers come from ``frame.f_code.co_filename`` and ``frame.f_lineno`` (what
   ``getframeinfo`` returns for a frame whose source file exists); tests/unit/
   test_operation_order.py shows the same order as pyinfra's own function.
4. The global arguments' names and types are computed once, not for every operation.
   ``pop_global_arguments`` calls ``all_global_arguments()``, which runs ``get_type_hints`` over
   the same class for each operation: 0.8 s of CPU per 20-broker run (400 operations). The
   class never changes, so its hints are kept (a fresh list each call, as before).

Each fix is applied once and is a no-op when pyinfra already behaves (a later release).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click
import pyinfra
import pyinfra.api.arguments
import pyinfra.api.operation
from paramiko import SSHException
from pyinfra.api.host import Host
from pyinfra.api.util import PYINFRA_INSTALL_DIR

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a job ended by Ctrl-C
_PATCHED = "_iotfleet_connection_lost_fix"
_F = TypeVar("_F", bound=Callable[..., Any])
# Hosts whose connection was lost during this run (name -> what happened), for the summary.
_lost: dict[str, str] = {}


class HostConnectionLost(SSHException):
    """The SSH connection to a host ended while the rollout still had commands for it."""


def _connection_lost_is_host_error(method: _F) -> _F:
    @functools.wraps(method)
    def wrapper(self: Host, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except SSHException as exc:
            # paramiko noticed the loss before the command: pyinfra handles this one already.
            if "session not active" in str(exc):
                _lost[self.name] = "SSH connection lost"
            raise
        except EOFError as exc:
            _lost[self.name] = "SSH connection lost"
            raise HostConnectionLost(
                f"the SSH connection to {self.name} was lost (the host went away or sshd stopped)"
            ) from exc

    setattr(wrapper, _PATCHED, True)
    return wrapper  # type: ignore[return-value]


def fail_lost_hosts_only() -> None:
    """Make ``EOFError`` from a host's connector that host's error, not the run's."""
    for name in ("run_shell_command", "put_file", "get_file"):
        method = getattr(Host, name)
        if not getattr(method, _PATCHED, False):
            setattr(Host, name, _connection_lost_is_host_error(method))


def failed_hosts_line(failed: list[str], total: int) -> str:
    """The summary's last line: which hosts did not finish (lost ones say so)."""
    names = ", ".join(f"{name} ({_lost[name]})" if name in _lost else name for name in failed)
    return f"--> {len(failed)} of {total} hosts failed, the others finished: {names}"


def name_failed_hosts_in_summary() -> None:
    """After pyinfra's results table, print the failed hosts by name."""
    cli: Any = sys.modules.get("pyinfra_cli.cli")
    original = getattr(cli, "print_results", None)
    if original is None or getattr(original, _PATCHED, False):
        return  # not run by the pyinfra CLI (or a release that moved it): nothing to add to

    def print_results(state: Any) -> None:
        original(state)
        failed = sorted(host.name for host in state.failed_hosts)
        if failed:
            click.echo(failed_hosts_line(failed, len(list(state.inventory))), err=True)

    setattr(print_results, _PATCHED, True)
    cli.print_results = print_results


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    click.echo("Exiting upon user request!", err=True)
    sys.exit(INTERRUPTED_EXIT)


def _is_pyinfra_cli_handler(handler: object) -> bool:
    return getattr(handler, "__module__", "") == "pyinfra_cli.main" and (
        getattr(handler, "__name__", "") == "_handle_interrupt"
    )


def interrupted_rollout_fails() -> None:
    """Replace pyinfra_cli's exit-0 SIGINT handler (only that one) by one that exits 130."""
    if not pyinfra.is_cli:
        return
    current = signal.getsignal(signal.SIGINT)
    if _is_pyinfra_cli_handler(current):
        signal.signal(signal.SIGINT, _exit_interrupted)


def operation_order_from_frames(state: Any) -> list[int]:
    """pyinfra's ``get_operation_order_from_stack`` without ``inspect.stack()``: the line
    numbers of the calls that led here, outermost first, from the first frame of the deploy
    file being run on, skipping pyinfra's own frames (the CLI's file number first)."""
    frames: list[FrameType] = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    start = 0
    if state.current_deploy_filename:
        # pyinfra: the first frame of the deploy file; none (a call from outside it): only
        # its own innermost frame is left, which is pyinfra's and skipped.
        start = next(
            (
                n
                for n, item in enumerate(frames)
                if item.f_code.co_filename == state.current_deploy_filename
            ),
            len(frames),
        )
    line_numbers: list[int] = [state.current_op_file_number] if pyinfra.is_cli else []
    line_numbers.extend(
        item.f_lineno
        for item in frames[start:]
        if not item.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)
    )
    return line_numbers


# SHA-256 of the source of the pyinfra function the frames walk replaces, as
# tests/unit/test_operation_order.py proved the same order for (pyinfra 3.10.0). Another
# pyinfra's may compute the order differently: it is then left in place (slower, not wrong).
ORDER_FUNCTION_SOURCE_SHA256 = "f4807f61585570e091fd453c7552d9e2b49329555f07f395a8e8f1d2a398a0b2"


def source_digest(function: Any) -> str | None:
    """SHA-256 of ``function``'s source; None if it cannot be read."""
    try:
        return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def order_operations_without_inspect_stack() -> None:
    """Have pyinfra's operation decorator use :func:`operation_order_from_frames`, when
    pyinfra's own function is the one it was shown to match."""
    # sys.modules: the attribute pyinfra.api.operation is the decorator, not its module.
    module: Any = sys.modules["pyinfra.api.operation"]
    current = getattr(module, "get_operation_order_from_stack", None)
    if current is None or getattr(current, _PATCHED, False):
        return
    if source_digest(current) == ORDER_FUNCTION_SOURCE_SHA256:
        setattr(operation_order_from_frames, _PATCHED, True)
        module.get_operation_order_from_stack = operation_order_from_frames


# SHA-256 of the source of pyinfra 3.10.0's all_global_arguments (fix 4 replaces only that one).
GLOBAL_ARGUMENTS_SOURCE_SHA256 = "f7afbc472d78c5d2f0bb282994175647651e888543da001968d903cc4a26a5a1"


def global_arguments_computed_once() -> None:
    """Have pyinfra compute its global arguments' type hints once per process."""
    module: Any = sys.modules["pyinfra.api.arguments"]
    current = module.all_global_arguments
    if (
        getattr(current, _PATCHED, False)
        or source_digest(current) != GLOBAL_ARGUMENTS_SOURCE_SHA256
    ):
        return
    hints = tuple(current())

    def all_global_arguments() -> list[tuple[str, type]]:
        return list(hints)

    setattr(all_global_arguments, _PATCHED, True)
    module.all_global_arguments = all_global_arguments


def apply() -> None:
    """Apply every carried fix (safe to call more than once)."""
    fail_lost_hosts_only()
    name_failed_hosts_in_summary()
    interrupted_rollout_fails()
    order_operations_without_inspect_stack()
    global_arguments_computed_once()
