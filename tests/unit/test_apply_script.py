"""The apply script is rendered from the broker file spec and passes shellcheck."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from iotfleet.mosquitto import layout
from iotfleet.roles.mosquitto.render import TEMPLATES, apply_script

TEMPLATE = TEMPLATES / "mosquitto-apply.sh.j2"
# An absolute path written as a literal in shell code (not inside a comment).
LITERAL_PATH = re.compile(r"(?<![\w$}/.])/(?:etc|var|usr|run|opt|srv|lib)/[\w./-]*")


def _code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def test_the_template_states_no_path_of_its_own() -> None:
    literal = [p for line in _code_lines(TEMPLATE.read_text()) for p in LITERAL_PATH.findall(line)]
    assert literal == [], f"paths belong in iotfleet.mosquitto.layout: {literal}"


def test_the_rendered_script_holds_the_spec_paths() -> None:
    script = apply_script()
    assert "{{" not in script and "}}" not in script
    for path in (
        layout.STAGING_DIR, layout.APPLY_LOCK, layout.ROLLBACK_DIR, layout.APPLIED_MARK,
        layout.APPLIED_LISTENERS, layout.HEALTH_CERT, layout.HEALTH_KEY, layout.CA_CHAIN,
    ):  # fmt: skip
        assert f"={path}\n" in script, path
    assert f"SERVICE={layout.SERVICE}\n" in script
    assert f"RUN_USER={layout.RUN_USER}\n" in script


def test_the_rendered_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is missing: run ./scripts/bootstrap.sh", pytrace=False)
    script = tmp_path / "mosquitto-apply"
    script.write_text(apply_script())
    result = subprocess.run(
        ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
