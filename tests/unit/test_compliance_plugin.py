"""The compliance suite as an installed pytest plugin: present in every pytest run of the
environment, it wakes up only for a run against a fleet and leaves other test suites alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_suite_asked_for_by_package_name_needs_an_inventory(tmp_path: Path) -> None:
    result = _pytest("--pyargs", "iotfleet.compliance", cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the compliance suite needs --inventory INVENTORY" in result.stderr


def test_other_suites_get_its_options_but_not_its_hooks(tmp_path: Path) -> None:
    # Two tests the suite's collection hook would reorder or parametrize if it were active.
    (tmp_path / "test_mine.py").write_text(
        "import pytest\n"
        "@pytest.mark.flood\n"
        "def test_b(): pass\n"
        "def test_a(broker=None): assert broker is None\n"
    )
    result = _pytest("-v", "--strict-markers", "test_mine.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "::test_" in line]
    assert [line.split("::")[1].split()[0] for line in lines] == ["test_b", "test_a"]
    options = _pytest("--help", cwd=tmp_path).stdout
    assert "--inventory=INVENTORY" in options and "HOST|GROUP" in options


def test_a_run_of_the_parent_directory_skips_the_suites_files() -> None:
    repo = Path(__file__).resolve().parents[2]
    result = _pytest("--collect-only", "-q", "tests", "--ignore=tests/integration", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests/unit/test_acl.py::" in result.stdout
    assert "tests/compliance" not in result.stdout


def test_other_suites_run_under_xdist_without_waking_the_suite(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text("def test_one(): pass\ndef test_two(): pass\n")
    result = _pytest("-n", "2", "test_mine.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout and "INTERNALERROR" not in result.stdout + result.stderr
