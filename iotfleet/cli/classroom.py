"""``iotfleet classroom``: a roster becomes a running class on the lab, offline."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from iotfleet.classroom.gateways import read_status, running_supervisor
from iotfleet.classroom.roster import RosterError, numbered_roster, read_roster
from iotfleet.classroom.run import bring_up, create_class, reset_student, take_down
from iotfleet.classroom.run import write_class_handouts as write_pages
from iotfleet.classroom.spec import ClassSpec
from iotfleet.classroom.store import (
    CLASS_ENV,
    ClassError,
    class_file,
    current_class_name,
    handouts_dir,
    load_class,
)
from iotfleet.lab import packages
from iotfleet.lab.errors import LabError
from iotfleet.model import InventoryError
from iotfleet.pki import PkiError

_err = Console(stderr=True, highlight=False)
EXIT_FAILED = 1
EXIT_ERROR = 2

_name_option = click.option(
    "--name", "name", default=None, help=f"Class name (default: ${CLASS_ENV} or the only class)."
)


def _say(line: str) -> None:
    _err.print(f"[bold]classroom:[/] {line}")


def _fail(exc: Exception) -> None:
    _err.print(f"[red]error:[/] {exc}")
    sys.exit(EXIT_ERROR)


def _load(name: str | None) -> ClassSpec:
    try:
        return load_class(current_class_name(name))
    except ClassError as exc:
        _fail(exc)
        raise AssertionError from exc  # unreachable: _fail exits


@click.group()
def cli() -> None:
    """Reproducible classroom: roster -> fleet, lab, credentials, handouts."""


@cli.command("new")
@click.argument("roster", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--students", type=int, default=None, help="No roster: N students student01...")
@click.option("--name", "name", required=True, help="Class name (one DNS label, e.g. eg254s).")
@click.option("--seed", default=None, help="Class seed (default: kept, or the class name).")
@click.option(
    "--shape",
    type=click.Choice(["shared", "per-student"]),
    default=None,
    help="One shared broker (default) or one broker per student.",
)
def new_command(
    roster: Path | None, students: int | None, name: str, seed: str | None, shape: str | None
) -> None:
    """Create the class from ROSTER.csv (columns: name, id, board_port, board_mac), or update
    it: a student added or removed changes nothing for the others."""
    if (roster is None) == (students is None):
        raise click.UsageError("give ROSTER.csv or --students N (one of them)")
    try:
        entries = read_roster(roster) if roster is not None else numbered_roster(students or 0)
        spec, changed = create_class(
            name,
            entries,
            seed=seed,
            shape="per-student" if shape == "per-student" else ("shared" if shape else None),
        )
    except (RosterError, ClassError, ValueError) as exc:
        _fail(exc)
        return
    verb = "written" if changed else "unchanged"
    click.echo(
        f"class {spec.name}: {len(spec.students)} students, {spec.shape} broker; "
        f"{class_file(spec.name)} {verb}"
    )
    click.echo(f"next: iotfleet classroom up --name {spec.name}")


@cli.command("up")
@_name_option
@click.option(
    "--suite", type=click.Choice(packages.SUITES), default=packages.DEFAULT_SUITE, show_default=True
)
@click.option("--no-check", is_flag=True, help="Skip the compliance check at the end.")
@click.option(
    "--connect-timeout",
    type=float,
    default=120,
    show_default=True,
    help="Seconds to wait for every simulated gateway to connect.",
)
def up_command(name: str | None, suite: str, no_check: bool, connect_timeout: float) -> None:
    """Bring the whole class up on the lab: hosts, rollout, gateways, handouts, check."""
    spec = _load(name)
    from iotfleet.cli.lab import rich_reporting

    try:
        with rich_reporting() as reporter:
            result = bring_up(
                spec,
                suite=suite,
                reporter=reporter,
                say=_say,
                run_check=not no_check,
                connect_timeout=connect_timeout,
            )
    except (ClassError, LabError, InventoryError, PkiError) as exc:
        _fail(exc)
        return
    missing = [device for device, ok in result.connected.items() if not ok]
    _say(
        f"{len(result.connected) - len(missing)}/{len(result.connected)} simulated gateways "
        f"connected; handouts in {result.handouts}; {result.seconds:.0f} s"
    )
    if result.check_returncode is not None:
        _err.print(result.check_output[-3000:])
    if missing or (result.check_returncode not in (None, 0)):
        if missing:
            _err.print(f"[red]not connected:[/] {', '.join(missing)}")
        sys.exit(EXIT_FAILED)


@cli.command("status")
@_name_option
def status_command(name: str | None) -> None:
    """Students, their gateways and whether each is connected; exit 1 if one is not."""
    spec = _load(name)
    status = read_status(spec.name)
    table = Table(title=f"class {spec.name} ({spec.shape} broker)")
    for column in ("student", "login", "gateway", "board", "connected", "readings"):
        table.add_column(column)
    down = []
    for student in spec.students:
        state = status.get(student.device)
        if student.board.emulated:
            ok = state is not None and state.connected
            if not ok:
                down.append(student.device)
            shown = "[green]yes[/]" if ok else "[red]no[/]"
            readings = str(state.telemetry_sent) if state else "-"
        else:
            shown, readings = "(real board)", "-"
        board = student.board.port or "emulated"
        table.add_row(student.name, student.id, student.device, board, shown, readings)
    Console().print(table)
    if running_supervisor(spec.name) is None:
        _err.print("simulated gateways are not running: `iotfleet classroom up`")
    if down:
        sys.exit(EXIT_FAILED)


@cli.command("reset")
@click.argument("student")
@_name_option
def reset_command(student: str, name: str | None) -> None:
    """Revoke STUDENT's gateway identity and password, issue new ones, re-flash the board."""
    spec = _load(name)
    try:
        reset_student(spec, student, say=_say)
    except KeyError as exc:
        _fail(ClassError(str(exc.args[0])))
    except (ClassError, InventoryError, PkiError) as exc:
        _fail(exc)


@cli.command("handouts")
@_name_option
def handouts_command(name: str | None) -> None:
    """Write the students' pages and the teacher overview again."""
    spec = _load(name)
    try:
        pages = write_pages(spec)
    except (ClassError, LabError, InventoryError, PkiError) as exc:
        _fail(exc)
        return
    click.echo(f"{len(pages)} page(s) in {handouts_dir(spec.name)} (index.html for the teacher)")


@cli.command("down")
@_name_option
def down_command(name: str | None) -> None:
    """Stop the simulated gateways and remove the class's lab (the class and PKI are kept)."""
    spec = _load(name)
    try:
        existed = take_down(spec.name)
    except LabError as exc:
        _fail(exc)
        return
    click.echo(f"class {spec.name}: lab removed" if existed else "no lab was running")
