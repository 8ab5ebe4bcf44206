"""Processes the lab starts: start detached, probe and stop them by their recorded PID.

A PID alone can be reused after a crash or reboot, so the lab records the process start time
too and only ever signals a PID whose start time still matches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from iotfleet.lab.errors import LabError
from iotfleet.lab.state import ProcessRef


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Start time of ``pid`` in clock ticks after boot, ``None`` if there is no such process."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(ref: ProcessRef | None) -> bool:
    """True if the process the lab recorded still runs (same PID, same start time, no zombie)."""
    if ref is None:
        return False
    if start_time(ref.pid) != ref.start_time:
        return False
    try:
        state = Path(f"/proc/{ref.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def start_detached(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> ProcessRef:
    """Start ``argv`` in its own session (it outlives the CLI), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    # Reap the child when it exits so it never lingers as a zombie of a long-running caller.
    _children.append(child)
    ticks = start_time(child.pid)
    if ticks is None:  # it died at once; report it as a dead process
        return ProcessRef(pid=child.pid, start_time=-1)
    return ProcessRef(pid=child.pid, start_time=ticks)


_children: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    """Collect exit statuses of children that ended (no-op for processes of earlier runs)."""
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)


def signal_process(ref: ProcessRef | None, sig: int) -> bool:
    """Send ``sig`` to the recorded process if it is still that process. True if sent."""
    if ref is None or not is_alive(ref):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(ref.pid, sig)
        return True
    return False


def wait_gone(refs: Iterable[ProcessRef], timeout: float) -> list[ProcessRef]:
    """Wait until every process has ended; return those still alive after ``timeout``."""
    pending = [r for r in refs if is_alive(r)]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        reap()
        pending = [r for r in pending if is_alive(r)]
    return pending


def stop_processes(refs: Iterable[ProcessRef | None], timeout: float = 10.0) -> None:
    """SIGTERM all, wait up to ``timeout``, then SIGKILL those left (all by recorded PID)."""
    live = [r for r in refs if r is not None and is_alive(r)]
    for ref in live:
        signal_process(ref, signal.SIGTERM)
    for ref in wait_gone(live, timeout):
        signal_process(ref, signal.SIGKILL)
    wait_gone(live, 5.0)


def pids_in_netns(netns_file: Path, proc: Path = Path("/proc")) -> list[int]:
    """PIDs of processes whose network namespace is the one bound at ``netns_file``.

    Used to find what is left inside a lab host's namespace after its nspawn process ended
    (for example after a crash): those processes belong to the lab and nothing else.
    """
    try:
        target = netns_file.stat()
    except FileNotFoundError:
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = (entry / "ns" / "net").stat()
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry.name))
    return found


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(
    argv: Sequence[str],
    timeout: float = 60.0,
    check: bool = True,
    input_text: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with a timeout; on failure raise with its stderr (no secrets in commands)."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input_text,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise LabError(f"`{argv[0]}` is not installed") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise LabError(f"`{' '.join(argv)}` failed ({result.returncode}): " + " | ".join(detail))
    return result
