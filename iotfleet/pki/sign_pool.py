"""Sign a large batch on every core: this process and fresh worker interpreters, over pipes.

Why not ``multiprocessing``: pyinfra monkey-patches its process with gevent, and a fork of a
patched process (a fork-context pool) can hang, so inside every real rollout the batch used to
be signed on one core. Workers here are new interpreters (``iotfleet.pki.sign_worker``, started
with ``subprocess``), fed over their stdin and read from their stdout with ``select``, which
behave the same with or without gevent's patches.

- The issuer key reaches a worker through its stdin pipe (between our own processes), never a
  file; workers get an empty environment (no passphrase variable) and write nothing.
- Chunks are handed out as workers return them (two in flight each) and this process signs
  chunks too between servicing the pipes, so a busy core slows the batch, not one part of it.
- A worker that dies, reports an error or says nothing for ``STALL_TIMEOUT`` seconds fails the
  batch with one ``SigningWorkerError``; every worker is killed and reaped. Nothing is written
  before the batch is complete, so the state dir is as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import serialization

from iotfleet.pki import sign_worker
from iotfleet.pki.certs import Issuer
from iotfleet.pki.errors import SigningWorkerError

# Jobs per chunk sent to a worker (~12 ms of signing), and chunks each worker holds ahead (so
# a worker keeps busy while this process is descheduled on a shared machine).
CHUNK = 100
IN_FLIGHT = 4
_LOCAL_SLICE = 16
# Seconds without a byte from any worker (while this process waits only for them).
STALL_TIMEOUT = 300.0
_PIPE_SIZE = 1 << 20  # room for a chunk's answer while this process is signing
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

WireJob = tuple[Any, ...]
Pair = tuple[bytes, bytes]


def worker_command() -> list[str]:
    """How a worker is started: this interpreter (no user site of its own, -s), running the
    worker file; it imports from this process's path (``worker_env``)."""
    return [sys.executable, "-s", str(Path(sign_worker.__file__).resolve())]


def worker_env() -> dict[str, str]:
    """A worker's whole environment: where this process finds ``cryptography`` (a user site,
    a checkout on PYTHONPATH), and nothing else: no passphrase variable ever reaches it."""
    return {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}


class _Worker:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_env(),
            close_fds=True,
        )
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stdin: int | None = self.proc.stdin.fileno()
        self.stdout: int | None = self.proc.stdout.fileno()
        self.stderr: int | None = self.proc.stderr.fileno()
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)
        for fd in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self.outbox = bytearray()
        self.inbox = bytearray()
        self.errors = bytearray()

    def describe_exit(self) -> str:
        code = self.proc.poll()
        if code is None:
            return f"signing worker pid {self.proc.pid} closed its output"
        if code < 0:
            return f"signing worker pid {self.proc.pid} was killed by signal {-code}"
        return f"signing worker pid {self.proc.pid} exited with status {code}"

    def last_error_line(self) -> str:
        lines = bytes(self.errors).decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""

    def stop(self, kill: bool) -> None:
        """End its input (it exits) or kill it; close the pipes; reap it."""
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _header(issuer: Issuer) -> bytes:
    if issuer.certificate is None or issuer.aki.authority_cert_issuer is not None:
        raise ValueError("issuer without its certificate: sign in this process")
    key_der = issuer.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_der = issuer.certificate.public_bytes(serialization.Encoding.DER)
    return sign_worker.encode_frame((key_der, cert_der, issuer.aki.key_identifier))


class SignPool:
    """``count`` worker interpreters, started at once (they boot while the caller plans);
    ``sign`` uses them and this process; use as a context manager (workers stopped on exit)."""

    def __init__(self, count: int) -> None:
        self.workers: list[_Worker] = []
        self._failed = False
        try:
            for _ in range(count):
                self.workers.append(_Worker(worker_command()))
        except BaseException:
            self.close(kill=True)
            raise

    def __enter__(self) -> SignPool:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self.close(kill=kind is not None or self._failed)

    def close(self, kill: bool = False) -> None:
        """Stop every worker (end of input, or killed) and reap it."""
        for worker in self.workers:
            worker.stop(kill=kill)
        self.workers = []

    def sign(
        self,
        jobs: Sequence[WireJob],
        issuer: Issuer,
        local: Callable[[WireJob], Pair],
        consume: Callable[[int, Sequence[Pair]], None] | None = None,
    ) -> list[Pair]:
        """(certificate PEM, key PEM) per job, in order, signed by the workers and this process
        (``local`` signs a job here); ``consume(start, pairs)`` gets them in order meanwhile.

        Raises:
            SigningWorkerError: a worker failed; every worker is killed, nothing was written.
        """
        chunks = [list(jobs[i : i + CHUNK]) for i in range(0, len(jobs), CHUNK)]
        batch = _Batch(chunks, consume)
        header = _header(issuer)
        try:
            for worker in self.workers:
                worker.outbox += header
            for _ in range(IN_FLIGHT):
                for worker in self.workers:
                    batch.assign(worker)
            batch.run(self.workers, local)
        except BaseException:
            self._failed = True
            self.close(kill=True)
            raise
        self.close()
        return [pair for chunk in batch.results if chunk is not None for pair in chunk]


class _Batch:
    def __init__(
        self, chunks: list[list[WireJob]], consume: Callable[[int, Sequence[Pair]], None] | None
    ) -> None:
        self.chunks = chunks
        self.results: list[list[Pair] | None] = [None] * len(chunks)
        self.pending = deque(range(len(chunks)))
        self.consume = consume
        self.delivered = 0  # chunks handed to ``consume``
        self.taken: set[int] = set()  # chunks of workers this process signs too

    def assign(self, worker: _Worker) -> None:
        if self.pending and worker.stdin is not None:
            number = self.pending.popleft()
            worker.outbox += sign_worker.encode_frame((number, self.chunks[number]))

    def done(self, number: int, pairs: list[Pair]) -> None:
        if self.results[number] is not None:
            return  # signed twice (this process took it over at the end): keep the first
        self.results[number] = pairs
        while self.delivered < len(self.results):
            ready = self.results[self.delivered]
            if ready is None:
                break
            if self.consume is not None:
                self.consume(self.delivered * CHUNK, ready)
            self.delivered += 1

    def _next_for_me(self) -> int | None:
        """A chunk for this process: the last one nobody has; at the end, the last one still
        unanswered (a worker holds it): signing it here beats waiting for a slow worker."""
        if self.pending:
            return self.pending.pop()
        missing = [n for n in range(len(self.results) - 1, self.delivered - 1, -1)
                   if self.results[n] is None and n not in self.taken]  # fmt: skip
        if not missing:
            return None
        self.taken.add(missing[0])
        return missing[0]

    def run(self, pool: list[_Worker], local: Callable[[WireJob], Pair]) -> None:
        mine: list[Pair] = []
        mine_number: int | None = None
        last_heard = time.monotonic()
        while self.delivered < len(self.results):
            if mine_number is None:
                mine_number, mine = self._next_for_me(), []
            readers = [fd for w in pool for fd in (w.stdout, w.stderr) if fd is not None]
            writers = [w.stdin for w in pool if w.outbox and w.stdin is not None]
            wait = 0 if mine_number is not None else 1.0
            ready_r, ready_w, _ = select.select(readers, writers, [], wait)
            for worker in pool:
                if worker.stdin in ready_w:
                    _flush(worker)
                if worker.stderr in ready_r:
                    _drain_stderr(worker)
                if worker.stdout in ready_r:
                    last_heard = time.monotonic()
                    for number, answer in _receive(worker):
                        self.done(number, answer)
                        self.assign(worker)
            if mine_number is not None:
                todo = self.chunks[mine_number]
                for job in todo[len(mine) : len(mine) + _LOCAL_SLICE]:
                    mine.append(local(job))
                if len(mine) == len(todo) or self.results[mine_number] is not None:
                    number, mine_number = mine_number, None
                    if len(mine) == len(todo):
                        self.done(number, mine)
            elif not (ready_r or ready_w) and time.monotonic() - last_heard > STALL_TIMEOUT:
                raise SigningWorkerError(
                    f"no signing worker answered for {STALL_TIMEOUT:g}s: stopped them all; "
                    "nothing was written (run again, or set the PKI's workers to 1)"
                )


def _flush(worker: _Worker) -> None:
    assert worker.stdin is not None
    try:
        written = os.write(worker.stdin, worker.outbox)
    except BlockingIOError:
        return
    except BrokenPipeError:
        _fail(worker, "")
    del worker.outbox[:written]


def _drain_stderr(worker: _Worker) -> None:
    assert worker.stderr is not None
    with contextlib.suppress(BlockingIOError):
        data = os.read(worker.stderr, 65536)
        if not data:
            worker.stderr = None
            return
        worker.errors += data
        del worker.errors[:-4096]


def _receive(worker: _Worker) -> list[tuple[int, list[Pair]]]:
    assert worker.stdout is not None
    try:
        data = os.read(worker.stdout, 1 << 20)
    except BlockingIOError:
        return []
    if not data:
        _fail(worker, "")
    worker.inbox += data
    answers: list[tuple[int, list[Pair]]] = []
    while (frame := sign_worker.split_frame(worker.inbox)) is not None:
        number, answer = frame
        if number < 0:
            _fail(worker, str(answer))
        answers.append((number, answer))
    return answers


def _fail(worker: _Worker, reported: str) -> NoReturn:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        worker.proc.wait(timeout=2)
    if worker.stderr is not None:
        with contextlib.suppress(OSError):
            _drain_stderr(worker)
    detail = reported or worker.last_error_line()
    raise SigningWorkerError(
        f"{worker.describe_exit()} before returning its certificates"
        + (f" ({detail})" if detail else "")
        + ": stopped every worker; nothing was written, the PKI state is as it was "
        "(run again, or set the PKI's workers to 1)"
    )
