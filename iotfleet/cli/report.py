"""``iotfleet report``: rebuild the HTML report from the run history (docs/compliance.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from iotfleet.fleet.paths import reports_dir
from iotfleet.fs.atomic import write_file_atomically
from iotfleet.report import history as run_history
from iotfleet.report import page


@click.command("report")
@click.option(
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Reports directory of `iotfleet check` (default: $IOTFLEET_REPORTS or ./reports).",
)
@click.option(
    "--history",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run history to read (default: REPORTS/history).",
)
@click.option("--fleet", metavar="NAME", help="Fleet to report on (default: the last checked).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Page to write (default: REPORTS/report.html).",
)
def cli(reports: Path | None, history: Path | None, fleet: str | None, output: Path | None) -> None:
    """Rebuild the report page of a fleet from its run history: the last run, what changed
    since the one before, days left of certificates and CRLs, trends."""
    console = Console(highlight=False)
    base = (reports or reports_dir()).resolve()
    store = (history or run_history.default_history(base)).resolve()
    known = run_history.fleets(store)
    name = fleet or (known[0] if known else None)
    runs = run_history.load(store, name) if name else []
    if not runs:
        what = f"fleet {name}" if fleet else "any fleet"
        others = f" (fleets there: {', '.join(known)})" if known else ""
        console.print(f"[bold red]iotfleet report:[/] no run of {what} in {store}{others}")
        sys.exit(2)
    target = (output or base / "report.html").resolve()
    links = [target.parent / n for n in ("results.json", "junit.xml", "pytest.log")]
    html = page.render(runs, [p for p in links if p.is_file()])
    write_file_atomically(target, html.encode(), mode=0o644)
    console.print(f"{target}: fleet {name}, {len(runs)} run(s), last {page.when(runs[-1].started)}")
