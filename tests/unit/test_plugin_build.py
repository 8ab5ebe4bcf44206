"""The plugin is compiled in the background while a run plans, and leaves no directory behind:
collected, or never collected (a refused or interrupted run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=False, cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_a_build_started_early_gives_the_same_binary_and_removes_its_directory(
    tmp_path: Path,
) -> None:
    code = (
        "import hashlib, os\n"
        "from iotfleet.roles.mosquitto import plugin_build as b\n"
        "b.start_auth_plugin_build()\n"
        "assert os.listdir(os.environ['TMPDIR'])  # gcc is at work in its directory\n"
        "early = b.auth_plugin()\n"
        "assert os.listdir(os.environ['TMPDIR']) == []\n"
        "b._built_plugin.cache_clear()\n"
        "late = b.auth_plugin()  # built on demand, as without the early start\n"
        "print(hashlib.sha256(early).hexdigest() == hashlib.sha256(late).hexdigest())\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert list(tmp_path.iterdir()) == []


def test_a_build_never_collected_is_removed_when_the_process_ends(tmp_path: Path) -> None:
    code = (
        "import os\n"
        "from iotfleet.roles.mosquitto import plugin_build as b\n"
        "b.start_auth_plugin_build()\n"
        "assert os.listdir(os.environ['TMPDIR'])\n"
        "raise SystemExit(3)  # e.g. a refused inventory after the start\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 3, result.stderr
    assert list(tmp_path.iterdir()) == []
