"""The shipped schedules (files/nightly): every cron line is valid /etc/cron.d syntax, the CRL
cron line runs exactly what the CRL service's ExecStart runs (they cannot drift apart), and
systemd's own verifier finds nothing to say about the shipped units and timers."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.gateway_helpers import REPO

NIGHTLY = REPO / "files" / "nightly"
CRON_FILES = sorted(NIGHTLY.glob("*.cron"))
UNITS = sorted([*NIGHTLY.glob("*@.service"), *NIGHTLY.glob("*@.timer")])
# /etc/cron.d fields: minute, hour, day of month, month, day of week (crontab(5)).
FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
ENVIRONMENT_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "<", ">&", "&", "2>"}


@dataclass(frozen=True)
class CronJob:
    fields: tuple[str, ...]
    user: str
    command: str


def _number(text: str, low: int, high: int, names: list[str]) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + (1 if names is MONTHS else 0)
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{text!r} is not in {low}-{high}")
    return int(text)


def check_cron_field(field: str, low: int, high: int, names: list[str]) -> None:
    """Raise ValueError unless ``field`` is valid in crontab(5): lists of ``*``, ``N``, ``N-M``,
    each with an optional ``/STEP``; names (jan, mon) where the field takes them."""
    for item in field.split(","):
        span, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"step {step!r} in {field!r}")
        if span == "*":
            continue
        first, dash, last = span.partition("-")
        start = _number(first, low, high, names)
        if dash and _number(last, low, high, names) < start:
            raise ValueError(f"range {span!r} runs backwards")
        if step and not dash:
            raise ValueError(f"a step needs * or a range: {item!r}")


def cron_jobs(path: Path) -> list[CronJob]:
    """The job lines of an /etc/cron.d file (5 time fields, the user, the command)."""
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#") or ENVIRONMENT_LINE.match(line):
            continue
        parts = line.split(None, 6)
        assert len(parts) == 7, f"{path.name}:{number}: not 5 time fields, a user and a command"
        *fields, user, command = parts
        for field, (low, high), names in zip(
            fields, FIELD_RANGES, ([], [], [], MONTHS, DAYS), strict=True
        ):
            try:
                check_cron_field(field, low, high, names)
            except ValueError as exc:
                raise AssertionError(f"{path.name}:{number}: {exc}") from None
        assert re.fullmatch(r"[a-z_][a-z0-9_-]*", user), f"{path.name}:{number}: user {user!r}"
        # cron turns an unescaped % into a newline: the command would be cut there.
        assert not re.search(r"(?<!\\)%", command), f"{path.name}:{number}: unescaped %"
        jobs.append(CronJob(tuple(fields), user, command))
    assert jobs, f"{path.name} has no job line"
    return jobs


def _unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(path)
    return unit


def _first_command(command: str) -> tuple[str | None, list[str]]:
    """(directory of a leading ``cd DIR &&``, argv of the command run in it), shell operators
    and redirections dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    directory = None
    if tokens[:1] == ["cd"]:
        assert tokens[2] == "&&", f"cd {tokens[1]} is not followed by &&"
        directory, tokens = tokens[1], tokens[3:]
    argv = []
    for token in tokens:
        if token in SHELL_OPERATORS or set(token) <= set("<>&|;"):
            break
        argv.append(token)
    return directory, argv


@pytest.mark.parametrize("path", CRON_FILES, ids=lambda p: p.name)
def test_cron_lines_are_valid_cron_d_syntax(path: Path) -> None:
    assert cron_jobs(path)


@pytest.mark.parametrize(
    "line",
    [
        "15 1 * * iotfleet true",  # four time fields
        "15 1 * * *",  # no user, no command
        "61 1 * * * iotfleet true",
        "15 24 * * * iotfleet true",
        "15 1 0 * * iotfleet true",
        "15 1 * 13 * iotfleet true",
        "15 1 * * 8 iotfleet true",
        "15 1 * * mon-sun iotfleet true",
        "*/0 1 * * * iotfleet true",
        "5/10 1 * * * iotfleet true",
        "15 1 * * * iotfleet date +%Y",
    ],
)
def test_the_cron_check_refuses_bad_lines(tmp_path: Path, line: str) -> None:
    """The syntax check itself can fail (each line breaks one rule)."""
    bad = tmp_path / "bad.cron"
    bad.write_text(f"MAILTO=ops@example.net\n{line}\n")
    with pytest.raises(AssertionError):
        cron_jobs(bad)


def test_the_crl_cron_line_runs_what_the_crl_service_runs() -> None:
    [job] = cron_jobs(NIGHTLY / "iotfleet-crl.cron")
    directory, argv = _first_command(job.command)
    service = _unit(NIGHTLY / "iotfleet-crl@.service")["Service"]
    [inventory] = [a for a in argv if a.startswith("inventory/")]
    instance = Path(inventory).stem  # %i: the inventory's name
    exec_start = shlex.split(service["ExecStart"].replace("%i", instance))
    workdir = service["WorkingDirectory"]
    assert directory == workdir, "cron's cd and the service's WorkingDirectory differ"
    assert job.user == service["User"], "cron's user and the service's User= differ"
    # Relative to the working directory, the same program with the same arguments.
    program = argv[0] if argv[0].startswith("/") else f"{directory}/{argv[0]}"
    assert [str(Path(program)), *argv[1:]] == exec_start
    assert exec_start[1:3] == ["pki", "refresh-crl"]


# -- systemd-analyze verify ----------------------------------------------------------------------


def _system_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate.resolve()
    raise AssertionError("systemd-analyze is installed but no system unit directory is")


def verify_units(root: Path, units: list[Path], instance: str = "plant-a") -> list[str]:
    """What ``systemd-analyze verify`` says about ``units`` (templates, as ``instance``), in a
    scratch root holding systemd's own units and a stand-in for each ExecStart program (the
    verifier insists they exist). Only lines about the given units: warnings included, since
    systemd merely warns on an unknown key or a bad value and then ignores the line."""
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    shutil.copytree(_system_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    names = []
    for unit in units:
        shutil.copy(unit, system / unit.name)
        names.append(unit.name.replace("@.", f"@{instance}."))
        for section in _unit(unit).values():
            for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop"):
                if key in section:
                    program = root / shlex.split(section[key])[0].lstrip("-@+!:").lstrip("/")
                    program.parent.mkdir(parents=True, exist_ok=True)
                    program.write_text("#!/bin/sh\n")
                    program.chmod(0o755)
    verified = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", *names],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    stems = {unit.name.split("@")[0] for unit in units}
    said = (verified.stdout + verified.stderr).splitlines()
    lines = [line for line in said if any(stem in line for stem in stems)]
    if verified.returncode != 0 and not lines:
        lines = said or [f"systemd-analyze exited {verified.returncode}"]
    return lines


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_systemd_analyze
def test_systemd_analyze_verify_finds_nothing_in_the_shipped_units(tmp_path: Path) -> None:
    assert UNITS, "no shipped units"
    assert verify_units(tmp_path, UNITS) == []


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("change", "said"),
    [
        (("Nice=5", "Nice=5\nProtectSystem=sometimes"), "protect system"),
        (("Nice=5", "Nice=5\nNoSuchKey=1"), "Unknown key"),
        (("Type=oneshot", "Type=oneshot\nExecStart=relative/path"), "absolute path"),
    ],
)
def test_systemd_analyze_verify_reports_a_broken_unit(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    """The verification can fail: a broken copy of the CRL service is reported."""
    broken = tmp_path / "units" / "iotfleet-crl@.service"
    broken.parent.mkdir()
    text = (NIGHTLY / broken.name).read_text()
    assert change[0] in text
    broken.write_text(text.replace(change[0], change[1], 1))
    lines = verify_units(tmp_path / "root", [broken, NIGHTLY / "iotfleet-crl@.timer"])
    assert any(said in line for line in lines), lines
