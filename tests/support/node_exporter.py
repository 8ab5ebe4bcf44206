"""Debian's prometheus-node-exporter run as a plain process on a loopback port, serving only
its textfile collector (never as the system service)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.local_broker import free_port

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


@contextmanager
def node_exporter(textfile_dir: Path) -> Iterator[str]:
    """Yields the URL of its /metrics; stops the process (by its PID) afterwards."""
    if not shutil.which(NODE_EXPORTER):
        pytest.fail(
            "this test needs Debian's prometheus-node-exporter (scripts/install-system-deps.sh)",
            pytrace=False,
        )
    port = free_port()
    process = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
         "--collector.disable-defaults", "--collector.textfile",
         f"--collector.textfile.directory={textfile_dir}", "--web.disable-exporter-metrics"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(100):
            if process.poll() is not None:
                raise AssertionError(f"node_exporter exited: {process.stderr.read()}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def scrape(url: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample the exporter serves."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples
