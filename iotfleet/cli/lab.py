"""``iotfleet lab``: real Debian hosts on this machine (systemd-nspawn) and emulated gateways."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from iotfleet.lab import naming, packages
from iotfleet.lab.attach import DEFAULT_DEVICE, attach, detach
from iotfleet.lab.down import down
from iotfleet.lab.errors import LabError
from iotfleet.lab.request import UpRequest
from iotfleet.lab.state import lab_paths
from iotfleet.lab.status import status
from iotfleet.lab.up import up

_console = Console(stderr=True)

_name_option = click.option(
    "--name",
    "name",
    envvar=naming.LAB_ENV,
    default=naming.DEFAULT_LAB,
    show_default=True,
    help=f"Lab name (several labs can run side by side); env {naming.LAB_ENV}.",
)


class RichReporter:
    """Renders the engine's progress with rich on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def task(self, description: str, total: int | None = None) -> int:
        return int(self._progress.add_task(description, total=total))

    def advance(self, task_id: int, description: str | None = None) -> None:
        if description:
            self._progress.update(TaskID(task_id), advance=1, description=description)
        else:
            self._progress.update(TaskID(task_id), advance=1)

    def done(self, task_id: int, description: str | None = None) -> None:
        task = next(t for t in self._progress.tasks if t.id == task_id)
        total = task.total if task.total is not None else 1
        self._progress.update(
            TaskID(task_id),
            total=total,
            completed=total,
            description=description or task.description,
        )

    def note(self, message: str) -> None:
        self._progress.console.print(f"[yellow]note:[/] {message}")


@contextmanager
def rich_reporting() -> Iterator[RichReporter]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=_console,
        transient=False,
    )
    with progress:
        yield RichReporter(progress)


def _fail(exc: LabError) -> None:
    _console.print(f"[red]error:[/] {exc}")
    sys.exit(1)


@click.group()
def cli() -> None:
    """A lab of real Debian hosts (systemd inside nspawn) plus emulated ESP8266 gateways."""


@cli.command("up")
@_name_option
@click.option("--brokers", default=1, show_default=True, type=click.IntRange(0, 240))
@click.option("--gateways", default=0, show_default=True, type=click.IntRange(0, 64))
@click.option(
    "--devices",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1_000_000),
    help="Extra software devices of the lab fleet (dev000001..), for benches.",
)
@click.option(
    "--suite",
    type=click.Choice(packages.SUITES),
    default=packages.DEFAULT_SUITE,
    show_default=True,
)
@click.option("--subnet", default=None, help="The lab's IPv4 /24 (default: first free one).")
@click.option(
    "--install-missing",
    is_flag=True,
    help="apt-get install debootstrap, systemd-container... if they are missing.",
)
@click.option(
    "--boot-timeout",
    type=float,
    default=None,
    help="Seconds one host may take to boot before it is restarted.",
)
def up_command(
    name: str,
    brokers: int,
    gateways: int,
    devices: int,
    suite: str,
    subnet: str | None,
    install_missing: bool,
    boot_timeout: float | None,
) -> None:
    """Bring the lab to BROKERS hosts, GATEWAYS boards and DEVICES extra devices (adds or
    removes; idempotent)."""
    started = time.monotonic()
    try:
        request = UpRequest(
            name=naming.validate_lab_name(name),
            brokers=brokers,
            gateways=gateways,
            devices=devices,
            suite=suite,
            subnet=subnet,
            install_missing=install_missing,
            boot_timeout=boot_timeout,
        )
        with rich_reporting() as reporter:
            state = up(request, reporter)
    except LabError as exc:
        _fail(exc)
        return
    paths = lab_paths(state.name)
    _console.print(
        f"[green]lab {state.name!r} is up[/] ({len(state.hosts)} host(s), "
        f"{len(state.gateways)} gateway(s), {state.suite}, {state.subnet}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    _console.print(f"  inventory: IOTFLEET_LAB={state.name} pyinfra inventory/lab.py ...")
    _console.print(
        f"  ssh:       ssh -i {paths.ssh_key} -o UserKnownHostsFile={paths.known_hosts} root@HOST"
    )


@cli.command("status")
@_name_option
def status_command(name: str) -> None:
    """Show the lab's hosts and gateways, probed now (process alive, sshd answering)."""
    try:
        state, hosts, gateways = status(naming.validate_lab_name(name))
    except LabError as exc:
        _fail(exc)
        return
    out = Console()
    table = Table(title=f"lab {state.name} ({state.suite}, {state.subnet})")
    for column in ("host", "fqdn", "address", "suite", "state"):
        table.add_column(column)
    colours = {"running": "green", "no-ssh": "yellow", "stopped": "red"}
    for host in hosts:
        colour = colours.get(host.state, "white")
        table.add_row(host.name, host.fqdn, host.address, host.suite, f"[{colour}]{host.state}[/]")
    out.print(table)
    if gateways:
        gw_table = Table(title="emulated gateways")
        for column in ("gateway", "port", "mac", "state"):
            gw_table.add_column(column)
        for gw in gateways:
            colour = "green" if gw.state == "running" else "red"
            gw_table.add_row(gw.name, f"127.0.0.1:{gw.port}", gw.mac, f"[{colour}]{gw.state}[/]")
        out.print(gw_table)
    attached = [g for g in gateways if g.attached]
    if attached:
        # A table of its own: the gateways table stays readable on an 80-column terminal.
        at_table = Table(title="attached gateways")
        for column in ("gateway", "host:device", "bridge"):
            at_table.add_column(column)
        for gw in attached:
            colour = "green" if gw.bridge == "running" else "red"
            at_table.add_row(gw.name, gw.attached, f"[{colour}]{gw.bridge}[/]")
        out.print(at_table)
    broken_bridge = any(g.bridge not in (None, "running") for g in gateways)
    if (
        any(h.state != "running" for h in hosts)
        or any(g.state != "running" for g in gateways)
        or broken_bridge
    ):
        sys.exit(3)


@cli.command("down")
@_name_option
def down_command(name: str) -> None:
    """Stop and remove everything the lab made (safe to run twice)."""
    try:
        with rich_reporting() as reporter:
            existed = down(naming.validate_lab_name(name), reporter)
    except LabError as exc:
        _fail(exc)
        return
    _console.print(f"lab {name!r} is down" if existed else f"no lab named {name!r}: nothing to do")


@cli.command("attach")
@_name_option
@click.argument("gateway")
@click.argument("host")
@click.option(
    "--device",
    default=DEFAULT_DEVICE,
    show_default=True,
    help="Absolute path under /dev inside HOST where the board appears.",
)
def attach_command(name: str, gateway: str, host: str, device: str) -> None:
    """Plug emulated board GATEWAY into lab host HOST as a serial device (a flash station)."""
    try:
        where, changed = attach(name, gateway, host, device)
    except LabError as exc:
        _fail(exc)
        return
    verb = "attached" if changed else "already attached"
    _console.print(f"{gateway} {verb} to {where.host} at {where.device} (lab {name!r})")


@cli.command("detach")
@_name_option
@click.argument("gateway")
def detach_command(name: str, gateway: str) -> None:
    """Unplug emulated board GATEWAY from the lab host it is attached to (safe to run twice)."""
    try:
        was = detach(name, gateway)
    except LabError as exc:
        _fail(exc)
        return
    if was is None:
        _console.print(f"{gateway} is not attached: nothing to do")
    else:
        _console.print(f"{gateway} detached from {was.host} ({was.device} removed)")
