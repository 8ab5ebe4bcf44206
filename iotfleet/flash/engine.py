"""Flash boards: identity check, skip what already matches, write, verify, record.

For each board: lock its port, connect (ROM, then esptool's stub), read the MAC and check the
binding, compare each region's MD5 with the board's, write only the regions that differ
(compressed), verify them by MD5, and record the outcome in the registry. Boards are flashed in
parallel threads; each gets a log file and a progress line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from rich.progress import Progress

from iotfleet.flash.binding import check_binding
from iotfleet.flash.boardlog import BoardLog, board_log_path
from iotfleet.flash.errors import FailureKind, FlashError
from iotfleet.flash.esplog import board_sink, routed_esptool_log
from iotfleet.flash.jobs import BoardResult, FlashJob, Region, station_jobs
from iotfleet.flash.progress import BoardProgress, NoProgress, RichBoardProgress, flash_progress
from iotfleet.flash.registry import FlashRecord, FlashRegistry, Result
from iotfleet.flash.session import BoardSession, Payload
from iotfleet.flash.station_link import StationLink, is_device_path, relayed_port
from iotfleet.fleet.context import FleetContext
from iotfleet.fs.errors import LockBusyError
from iotfleet.fs.locks import acquire
from iotfleet.model import FlashStation
from iotfleet.model.build import LOCAL_STATION

DEFAULT_CONNECT_ATTEMPTS = 4


@dataclass(frozen=True)
class FlashOptions:
    """How to talk to boards, and where logs and port locks live."""

    baud: int = 460800
    connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS  # ~0.75 s each before "no answer"
    log_dir: Path | None = None  # one log per board under <log_dir>/<station>/; None: no logs
    lock_dir: Path | None = None  # port locks; default: ``port_lock_dir()``


class _Payloads:
    """Compressed payloads, made once per content: every board gets the same firmware."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, str], Payload] = {}

    def get(self, region: Region) -> Payload:
        key = (region.offset, region.sha256)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            cached = Payload.of(region.offset, region.data)  # zlib releases the GIL
            with self._lock:
                self._cache.setdefault(key, cached)
        return cached


def flash_boards(
    jobs: Sequence[FlashJob],
    registry: FlashRegistry,
    *,
    parallel: int = 8,
    reenroll: bool = False,
    progress: bool | Progress = True,
    options: FlashOptions | None = None,
    dry_run: bool = False,
    link: StationLink | None = None,
) -> list[BoardResult]:
    """Flash ``jobs`` (at most ``parallel`` at once); one result per job, in order.

    Args:
        jobs: what to flash where (see ``station_jobs``).
        registry: where outcomes and MAC enrollments are recorded.
        parallel: boards flashed at the same time (``espgw_parallel``).
        reenroll: accept a new board (MAC) for an enrolled device (``espgw_reenroll``).
        progress: draw rich progress on stderr (True), into a given ``Progress``, or not.
        options: baud rate, connection attempts, log and lock directories.
        dry_run: connect, check identity and compare digests, but write nothing and record
            nothing; boards that would be written come back as ``outdated``.
        link: the SSH connection to the jobs' flash station, for boards on its device paths.

    A board that fails never stops the others; nothing raises for a board's failure.
    """
    opts = options or FlashOptions()
    if not jobs:
        return []
    payloads = _Payloads()
    display: Progress | None
    if isinstance(progress, Progress):
        display, own_display = progress, False
    else:
        display, own_display = (flash_progress() if progress else None), bool(progress)
    trackers: list[BoardProgress] = [
        RichBoardProgress(display, job.device_id, job.port) if display else NoProgress()
        for job in jobs
    ]
    context = display if own_display and display is not None else contextlib.nullcontext()
    with (
        context,
        routed_esptool_log(),
        ThreadPoolExecutor(
            max_workers=max(1, min(parallel, len(jobs))), thread_name_prefix="iotfleet-flash"
        ) as pool,
    ):
        futures = [
            pool.submit(_flash_one, job, registry, reenroll, opts, tracker, payloads, dry_run, link)
            for job, tracker in zip(jobs, trackers, strict=True)
        ]
        return [future.result() for future in futures]


def flash_board(
    job: FlashJob,
    registry: FlashRegistry,
    *,
    reenroll: bool = False,
    options: FlashOptions | None = None,
) -> BoardResult:
    """Flash one board, without a progress display (see ``flash_boards``)."""
    with routed_esptool_log():
        return _flash_one(
            job, registry, reenroll, options or FlashOptions(), NoProgress(), _Payloads()
        )


def flash_station(
    ctx: FleetContext,
    station: FlashStation | str,
    *,
    base_dir: Path | None = None,
    parallel: int | None = None,
    reenroll: bool | None = None,
    progress: bool | Progress = True,
    options: FlashOptions | None = None,
    dry_run: bool = False,
    link: StationLink | None = None,
) -> list[BoardResult]:
    """Flash every board of one flash station of the fleet; results in inventory order.

    Settings default to the station's ``espgw_*`` keys (``parallel``, ``reenroll``, ``baud``);
    the registry is the fleet's (``ctx.registry_path``), logs go under the fleet's state
    directory (``flash-logs/<station>/<device>.log``). Boards whose inputs are bad are reported
    as failed with the others (never recorded: nothing was observed on them). Boards on a
    remote station's device paths need ``link``, the SSH connection to that station.
    """
    if isinstance(station, str):
        station = next(s for s in ctx.fleet.stations if s.name == station)
    settings = station.gateway
    # A planning pass (dry_run) writes nothing on the control machine: no log, no registry.
    logs = None if dry_run else ctx.state_dir / "flash-logs"
    opts = options or FlashOptions(baud=settings.baud, log_dir=logs)
    registry = FlashRegistry(ctx.registry_path, read_only=dry_run)
    try:
        jobs, failures = station_jobs(ctx, station, base_dir=base_dir)
        results = flash_boards(
            jobs,
            registry,
            parallel=parallel or settings.parallel,
            reenroll=settings.reenroll if reenroll is None else reenroll,
            progress=progress,
            options=opts,
            dry_run=dry_run,
            link=link,
        )
    finally:
        registry.close()
    by_device = {r.device_id: r for r in [*failures, *results]}
    return [by_device[board.device] for board in station.boards]


# -- one board ---------------------------------------------------------------------------------


def _flash_one(
    job: FlashJob,
    registry: FlashRegistry,
    reenroll: bool,
    opts: FlashOptions,
    tracker: BoardProgress,
    payloads: _Payloads,
    dry_run: bool = False,
    link: StationLink | None = None,
) -> BoardResult:
    started = time.monotonic()
    path = board_log_path(opts.log_dir, job.station, job.device_id) if opts.log_dir else None
    with BoardLog(path) as log, board_sink(log.write):
        log.line(
            f"=== flashing device {job.device_id} on {job.port} (station {job.station}, "
            f"layout {job.layout})"
        )
        outcome = _Outcome()
        try:
            _run(job, registry, reenroll, opts, tracker, payloads, log, outcome, dry_run, link)
        except FlashError as exc:
            outcome.fail(str(exc), exc.kind)
        except Exception as exc:  # an engine bug must not take the other boards down
            outcome.fail(f"unexpected error: {type(exc).__name__}: {exc}", "failed")
        result = outcome.result(job, time.monotonic() - started, path)
        if not outcome.observed:
            log.line("registry left as it was: the board was not reached")
        elif dry_run:
            result = replace(result, registry_stale=_stale(registry, result, job))
        else:
            try:
                registry.record(_record_of(result, job), enroll=outcome.enroll)
            except Exception as exc:
                result = _with_message(result, f"{result.message}; registry not updated: {exc}")
        log.line(f"=== {result.status}: {result.message}")
        if log.problem:
            result = _with_message(result, f"{result.message}; {log.problem}")
    tracker.finish(result.status if result.ok else f"{result.status}: {result.message}", result.ok)
    return result


class _Outcome:
    """What is known so far about one board's flash."""

    def __init__(self) -> None:
        self.status: Result | Literal["outdated"] = "failed"
        self.message = ""
        self.kind: FailureKind | None = None
        self.mac: str | None = None
        self.enroll = False
        self.written: list[str] = []
        self.bytes_written = 0
        self.bytes_sent = 0
        # Something was learnt about the board itself: its flash was compared (and maybe
        # written), or it was found to be another board or chip. Only then is it recorded:
        # a run that never reached the board (bad inputs, a busy port, no answer) must not
        # overwrite what the registry truthfully knows.
        self.observed = False

    def fail(self, message: str, kind: FailureKind) -> None:
        self.status = "refused" if kind == "refused" else "failed"
        self.message = message
        self.kind = kind
        self.enroll = False
        if kind in ("refused", "chip"):
            self.observed = True

    def result(self, job: FlashJob, duration: float, log_path: Path | None) -> BoardResult:
        message = self.message
        if self.status in ("failed", "refused"):
            message = f"board {job.device_id} on {job.port}: {message}"
        return BoardResult(
            station=job.station,
            port=job.port,
            device_id=job.device_id,
            status=self.status,
            message=message,
            mac=self.mac,
            kind=self.kind,
            regions_written=tuple(self.written),
            bytes_written=self.bytes_written,
            bytes_sent=self.bytes_sent,
            duration=duration,
            log_path=log_path,
        )


def _run(
    job: FlashJob,
    registry: FlashRegistry,
    reenroll: bool,
    opts: FlashOptions,
    tracker: BoardProgress,
    payloads: _Payloads,
    log: BoardLog,
    outcome: _Outcome,
    dry_run: bool,
    link: StationLink | None,
) -> None:
    tracker.stage("connecting")
    lock_dir = opts.lock_dir or port_lock_dir()
    with _port_lock(lock_dir, job.station, job.port), _reach(job, link) as url:
        session = BoardSession.open(
            url, baud=opts.baud, connect_attempts=opts.connect_attempts, label=job.port
        )
        try:
            outcome.mac = session.mac
            log.line(f"board MAC {session.mac}, flash {session.flash_size // 1024} KB")
            enrollment = registry.enrollment(job.device_id)
            binding = check_binding(
                device_id=job.device_id,
                mac=session.mac,
                expected=job.expected_macs,
                enrolled_mac=enrollment.mac if enrollment else None,
                mac_owner=registry.device_for_mac(session.mac),
                reenroll=reenroll,
            )
            log.line(f"identity: {binding}")
            _check_fits(job, session.flash_size)
            tracker.stage("comparing")
            todo = [r for r in job.regions if session.md5(r.offset, len(r.data)) != r.md5]
            outcome.observed = True
            for region in job.regions:
                state = "differs" if region in todo else "matches, skipped"
                log.line(
                    f"{region.name} at 0x{region.offset:x} ({len(region.data)} bytes): {state}"
                )
            if todo and dry_run:
                outcome.status = "outdated"
                outcome.message = "would write " + ", ".join(r.name for r in todo)
            elif todo:
                _write(session, todo, tracker, payloads, log, outcome)
                outcome.status = "flashed"
                outcome.message = "wrote " + ", ".join(outcome.written)
            else:
                outcome.status = "unchanged"
                outcome.message = "flash already matches: nothing written"
            outcome.enroll = binding in ("enroll", "reenroll")
        finally:
            session.close()


def _check_fits(job: FlashJob, flash_size: int) -> None:
    if flash_size < job.flash_size:
        raise FlashError(
            f"the board has {flash_size // 1024} KB of flash; layout {job.layout} needs "
            f"{job.flash_size // 1024} KB",
            "chip",
        )
    for region in job.regions:
        if region.end > flash_size:
            raise FlashError(
                f"{region.name} ends at 0x{region.end:x}, beyond the {flash_size // 1024} KB flash",
                "chip",
            )


def _write(
    session: BoardSession,
    todo: list[Region],
    tracker: BoardProgress,
    payloads: _Payloads,
    log: BoardLog,
    outcome: _Outcome,
) -> None:
    prepared = [(region, payloads.get(region)) for region in todo]
    tracker.expect(sum(payload.wire_size for _, payload in prepared))
    tracker.stage("writing")
    for region, payload in prepared:
        log.line(
            f"writing {region.name} at 0x{region.offset:x}: {len(region.data)} bytes, "
            f"{payload.wire_size} on the wire"
        )
        outcome.bytes_sent += session.write(payload, tracker.advance)
        outcome.bytes_written += len(region.data)
        outcome.written.append(region.name)
    session.finish_writes()
    tracker.stage("verifying")
    for region, payload in prepared:
        digest = session.md5(region.offset, len(region.data))
        if digest != payload.md5:
            raise FlashError(
                f"{region.name} at 0x{region.offset:x} reads back with MD5 {digest}, "
                f"expected {payload.md5}",
                "verify",
            )
        log.line(f"verified {region.name} (MD5 {digest})")


@contextlib.contextmanager
def _reach(job: FlashJob, link: StationLink | None) -> Iterator[str]:
    """The port URL esptool opens: the board's own, or a relay to a remote station's device."""
    if job.station == LOCAL_STATION or not is_device_path(job.port):
        yield job.port
        return
    if link is None:
        raise FlashError(
            f"{job.port} is a serial device of flash station {job.station}: its boards are "
            "flashed over that station's SSH connection by the rollout "
            "(pyinfra INVENTORY deploy/gateways.py)",
            "port",
        )
    with relayed_port(link, job.port) as url:
        yield url


def port_lock_dir() -> Path:
    """Where port locks live: machine-wide runtime state (a serial port is the machine's, and
    whoever flashes it, any fleet, must wait), never in a fleet's state directory, which a
    planning pass must leave as it is."""
    shared = Path("/run/lock")
    if shared.is_dir() and os.access(shared, os.W_OK):
        return shared / "iotfleet-flash"
    return Path(tempfile.gettempdir()) / f"iotfleet-flash-{os.getuid()}"


@contextlib.contextmanager
def _port_lock(lock_dir: Path, station: str, port: str) -> Iterator[None]:
    """Hold ``port`` exclusively among iotfleet flashes (threads and processes)."""
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = f"{station}\n{port}".encode()
    path = lock_dir / (hashlib.sha256(key).hexdigest()[:24] + ".lock")
    try:
        held = acquire(path)  # refused at once: a busy port is not waited for
    except LockBusyError as busy:
        raise FlashError(
            f"port {port} is busy: another iotfleet flash is using it ({busy.held_by})", "busy"
        ) from None
    with held:
        yield


def _record_of(result: BoardResult, job: FlashJob | None) -> FlashRecord:
    if result.status == "outdated":
        raise ValueError("a dry run is not recorded")
    return FlashRecord(
        station=result.station,
        port=result.port,
        device_id=result.device_id,
        result=result.status,
        provisioned=result.ok,
        mac=result.mac,
        firmware_sha256=job.firmware_sha256 if job else None,
        image_sha256=job.image_sha256 if job else None,
        cert_serial=job.cert_serial if job else None,
        layout=job.layout if job else None,
        bytes_written=result.bytes_written,
        duration=round(result.duration, 3),
        message=result.message,
    )


_SAME_BOARD_FIELDS = ("station", "port", "mac", "firmware_sha256", "image_sha256", "layout")


def _stale(registry: FlashRegistry, result: BoardResult, job: FlashJob) -> bool:
    """Whether a planning pass saw the board in a state its registry entry does not say (a
    board found unchanged whose last entry is a failure, or another image): the run that
    executes then records what it reads."""
    if result.status != "unchanged":
        return False
    last = registry.latest(job.device_id)
    seen = _record_of(result, job)
    return (
        last is None
        or not last.provisioned
        or any(getattr(last, name) != getattr(seen, name) for name in _SAME_BOARD_FIELDS)
    )


def _with_message(result: BoardResult, message: str) -> BoardResult:
    return replace(result, message=message)
