"""``iotfleet check INVENTORY``: the compliance suite against a fleet (docs/compliance.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from iotfleet.check.runner import CheckRequest, run_check
from iotfleet.fleet.inventory import OVERRIDE_DATA_ENV, parse_data_option
from iotfleet.fleet.paths import reports_dir
from iotfleet.report.history import KEEP_DAYS
from iotfleet.report.prometheus import SUFFIX


def _prometheus_file(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Any:
    if value is not None and not value.name.endswith(SUFFIX):
        raise click.BadParameter(f"node_exporter reads only *{SUFFIX} files: {value}")
    return value


@click.command("check")
@click.argument(
    "inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="INVENTORY"
)
@click.option(
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for report.html, results.json, junit.xml, pytest.log "
    "(default: $IOTFLEET_REPORTS or ./reports).",
)
@click.option(
    "--history",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the run history the report's trends come from (default: "
    "REPORTS/history). Keep it in one place when each run has its own --reports.",
)
@click.option(
    "--history-days",
    type=click.FloatRange(min=0, min_open=True),
    default=KEEP_DAYS,
    show_default=True,
    help="Runs older than this many days are dropped from the history.",
)
@click.option(
    "--prometheus",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=_prometheus_file,
    metavar="FILE.prom",
    help="Also write the results as node_exporter textfile metrics here (atomically).",
)
@click.option(
    "-m",
    "markexpr",
    metavar="MARKEXPR",
    help="Only checks matching these markers "
    "(host, outside, service, listeners, files, config, pki, firewall, ssh, tls, mqtt, attack, "
    "flood).",
)
@click.option("-k", "keyword", metavar="EXPR", help="Only checks whose id matches (pytest -k).")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Brokers checked at once (default: all, at most 16).",
)
@click.option(
    "--limit",
    multiple=True,
    metavar="HOST|GROUP",
    help="Check only these brokers: a host name, glob or inventory group, as pyinfra's "
    "--limit (repeatable).",
)
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override host data as the rollout did (pyinfra --data; repeatable).",
)
@click.option(
    "--probe-device",
    metavar="ID",
    help="A real device for the MQTT probes to connect as (default: iotfleet's own probes).",
)
@click.option(
    "--cert-margin-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Fail when a broker certificate expires sooner (default 14).",
)
@click.option(
    "--crl-margin-hours",
    type=click.FloatRange(min=0),
    default=None,
    help="Fail when a broker's CRL reaches nextUpdate sooner (default 72).",
)
def cli(
    inventory: Path,
    reports: Path | None,
    history: Path | None,
    history_days: float,
    prometheus: Path | None,
    markexpr: str | None,
    keyword: str | None,
    parallel: int | None,
    limit: tuple[str, ...],
    data: tuple[str, ...],
    probe_device: str | None,
    cert_margin_days: float | None,
    crl_margin_hours: float | None,
) -> None:
    """Check a fleet against its inventory: inside each broker (SSH) and from outside (TLS,
    MQTT attacks). Exit 0 when every check passes, 1 when one fails, 2 on a usage or
    inventory error."""
    if data:
        try:
            overrides = dict(parse_data_option(option) for option in data)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        # Every process of this run that loads the inventory sees the same overrides.
        os.environ[OVERRIDE_DATA_ENV] = json.dumps(overrides)
    request = CheckRequest(
        inventory=inventory,
        reports=(reports or reports_dir()).resolve(),
        markexpr=markexpr,
        keyword=keyword,
        parallel=parallel,
        limit=limit,
        probe_device=probe_device,
        cert_margin_days=cert_margin_days,
        crl_margin_hours=crl_margin_hours,
        history=history.resolve() if history else None,
        history_days=history_days,
        prometheus=prometheus.resolve() if prometheus else None,
    )
    sys.exit(run_check(request, Console(highlight=False)))
