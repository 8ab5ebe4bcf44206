"""`iotfleet pki ...`: look at and act on the fleet PKI by hand (the inventory stays the truth)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from iotfleet.pki import (
    REVOCATION_REASONS,
    PkiError,
    PkiSettings,
    StatusReport,
    StatusRow,
    renew_intermediate,
    revoke,
    status,
)
from iotfleet.project import PROJECT_DIR, project_file

EXIT_ATTENTION = 1  # status: something is inside its renewal window, expired, or a CRL is stale
EXIT_ERROR = 2  # the command could not run (bad state dir, passphrase, input)
_LIST_LIMIT = 200  # above this many rows, `status` lists only what needs attention unless --all


class PkiCommandError(click.ClickException):
    exit_code = EXIT_ERROR


def resolve_settings(
    state_dir: Path | None, passphrase_file: Path | None, inventory: Path | None = None
) -> PkiSettings:
    """Settings from the command line: an inventory (the source of truth) or a state dir."""
    if inventory is not None:
        settings = _settings_from_inventory(inventory)
        if passphrase_file is not None:
            settings = dataclasses.replace(
                settings, passphrase_file=passphrase_file, passphrase_value=None
            )
        return settings
    if state_dir is None:
        raise click.UsageError(
            "say which PKI: --inventory INVENTORY (or $IOTFLEET_INVENTORY), or --state-dir DIR"
        )
    return PkiSettings(state_dir=state_dir, passphrase_file=passphrase_file)


def _settings_from_inventory(inventory: Path) -> PkiSettings:
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.fleet.paths import fleet_dir
    from iotfleet.fleet.pki import pki_settings_for
    from iotfleet.fleet.secrets import SecretError, SecretStore
    from iotfleet.model import InventoryError

    try:
        fleet, _ = load_fleet(inventory)
        # Read-only: a generated CA passphrase exists once a rollout created the PKI.
        secrets = SecretStore(fleet_dir(fleet.name) / "secrets", read_only=True)
        return pki_settings_for(fleet, fleet_dir(fleet.name), secrets)
    except (InventoryError, SecretError, FileNotFoundError) as exc:
        raise PkiCommandError(str(exc)) from None


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options that locate the PKI and pass the resolved ``settings`` to ``command``."""

    @click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="IOTFLEET_PKI_STATE_DIR",
        help="PKI state directory.",
    )
    @click.option(
        "--passphrase-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="0600 file holding the CA passphrase (default: $IOTFLEET_PKI_PASSPHRASE).",
    )
    @click.option(
        "--inventory",
        "-i",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="IOTFLEET_INVENTORY",
        help="pyinfra inventory of the fleet (the PKI settings come from it).",
    )
    @functools.wraps(command)
    def wrapper(
        state_dir: Path | None, passphrase_file: Path | None, inventory: Path | None, **kwargs: Any
    ) -> Any:
        settings = resolve_settings(state_dir, passphrase_file, inventory)
        try:
            return command(settings=settings, **kwargs)
        except PkiError as exc:
            raise PkiCommandError(str(exc)) from None

    return wrapper


@click.group()
def cli() -> None:
    """Fleet PKI: status, manual revocation, intermediate renewal."""


_KIND_LABEL = {
    "root-ca": "root CA",
    "intermediate-ca": "intermediate",
    "root-crl": "root CRL",
    "crl": "CRL",
}
_STYLE = {
    "ok": "green",
    "retiring": "cyan",
    "renew": "yellow",
    "expired": "bold red",
    "stale": "bold red",
    "missing": "bold red",
    "future": "bold red",
}


def _row_cells(row: StatusRow) -> list[str]:
    style = _STYLE.get(row.state, "default")
    days = "-" if row.days_left is None else str(row.days_left)
    return [
        _KIND_LABEL.get(row.kind, row.kind),
        row.name,
        row.serial[:12],
        f"{row.expires:%Y-%m-%d}" if row.expires else "-",
        f"[{style}]{days}[/]",
        f"[{style}]{row.state}[/]",
        row.note,
    ]


def _field_state(row: StatusRow) -> str:
    """One word for a device row renewed over the air: in use > delivered > not sent."""
    if row.in_use == "yes":
        return "[green]in use[/]"
    if row.delivered == "yes":
        return "delivered"
    if row.delivered == "no":
        return "[yellow]not sent[/]"
    return "-" if row.in_use else ""


def render_status(report: StatusReport, console: Console, *, show_all: bool) -> None:
    """The status table; large fleets list only CA rows and what needs attention by default."""
    table = Table(title=f"PKI {report.state_dir}", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=12)
    table.add_column("serial", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("days left", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True, min_width=8)
    rows = report.rows
    with_delivery = any(row.delivered or row.in_use for row in rows)
    if with_delivery:  # devices renewed over the air: delivered to the gateway / in use there
        table.add_column("gateway", no_wrap=True)
    with_notes = any(row.note for row in rows)
    if with_notes:
        table.add_column("note", overflow="fold")
    hidden = 0
    if not show_all and len(rows) > _LIST_LIMIT:
        shown = [
            r
            for r in rows
            if r.kind in ("root-ca", "intermediate-ca", "crl", "root-crl") or r.needs_attention
        ]
        hidden = len(rows) - len(shown)
        rows = tuple(shown)
    for row in rows:
        cells = _row_cells(row)
        note = cells.pop()
        if with_delivery:
            cells.append(_field_state(row))
        table.add_row(*([*cells, note] if with_notes else cells))
    console.print(table)
    if hidden:
        console.print(f"{hidden} more identities are ok (--all lists them).")
    attention = len(report.attention_rows)
    if attention:
        console.print(
            f"[bold yellow]{attention} item(s) need attention[/]: run the PKI deploy "
            "(reconcile) or see docs/pki.md."
        )
    else:
        console.print("[green]Everything is valid and outside its renewal window.[/]")


def required_inventory(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--inventory/-i`` option of commands that need the fleet (``what``: what from)."""
    return click.option(
        "--inventory",
        "-i",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="IOTFLEET_INVENTORY",
        required=True,
        help=f"pyinfra inventory of the fleet ({what}).",
    )


@cli.command("status")
@settings_options
@click.option("--all", "show_all", is_flag=True, help="List every identity, even in big fleets.")
def status_command(settings: PkiSettings, show_all: bool) -> None:
    """Days left for the CA, the CRLs and every identity; exit 1 if something needs attention."""
    report = status(settings)
    render_status(report, Console(), show_all=show_all)
    if report.needs_attention:
        raise SystemExit(EXIT_ATTENTION)


@cli.command("revoke")
@click.argument("name")
@click.option(
    "--reason", required=True, type=click.Choice(list(REVOCATION_REASONS)), help="RFC 5280 reason."
)
@settings_options
def revoke_command(settings: PkiSettings, name: str, reason: str) -> None:
    """Revoke NAME's certificate now and re-sign the CRL.

    If the inventory still lists NAME, the next reconcile issues a fresh key and certificate;
    mark it revoked in the inventory to keep it out.
    """
    record = revoke(settings, name, reason)
    click.echo(
        f"revoked {record.name} (serial {record.serial_hex}, reason {reason}); "
        "the CRL was re-signed: redistribute it (deploy brokers)."
    )


@cli.command("renew-intermediate")
@settings_options
def renew_intermediate_command(settings: PkiSettings) -> None:
    """Re-certify the issuing intermediate (needs ca/root.key online)."""
    not_after = renew_intermediate(settings)
    click.echo(
        f"intermediate renewed until {not_after:%Y-%m-%d}; redistribute ca/chain.pem "
        "(deploy brokers and gateways), then take the root key offline again."
    )


@cli.command("export")
@click.argument("name")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for ca.pem, NAME.crt and NAME.key (created 0700).",
)
@settings_options
def export_command(settings: PkiSettings, name: str, out_dir: Path) -> None:
    """Write NAME's certificate, key and the CA chain for a client that is not flashed.

    For people and services (mosquitto_sub, paho-mqtt, a dashboard). The key file is 0600;
    its content is never printed.
    """
    from iotfleet.fs.atomic import write_file_atomically
    from iotfleet.pki import PkiStore

    store = PkiStore(settings.state_dir)
    try:
        certificate, key = store.certificate_pem(name), store.private_key_pem(name)
    except LookupError:
        raise PkiCommandError(
            f"{name} has no valid certificate in {settings.state_dir} "
            "(not in the inventory, revoked, or the PKI deploy has not run yet)"
        ) from None
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_atomically(out_dir / "ca.pem", store.ca_chain_pem(), mode=0o644)
    write_file_atomically(out_dir / f"{name}.crt", certificate, mode=0o644)
    write_file_atomically(out_dir / f"{name}.key", key, mode=0o600)
    click.echo(f"wrote {out_dir}/ca.pem, {name}.crt and {name}.key (0600)")


@cli.command("rekey")
@click.argument("device")
@required_inventory("its devices and PKI settings")
def rekey_command(device: str, inventory: Path) -> None:
    """Ask DEVICE's gateway for a new key, over the air (no passphrase, no network here).

    Marks the request in the PKI state; the next rollout (or `iotfleet pki deliver`) publishes
    it to the gateway, which makes a new key and sends a CSR; the CSR is signed if its CN is
    DEVICE and it is signed by its own key, and the certificate is delivered like a renewal.
    The old certificate stays valid until the gateway is seen using the new one.
    """
    from datetime import UTC, datetime

    from iotfleet.fleet.context import FleetContext
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.model import InventoryError
    from iotfleet.pki.rekey import request_rekey

    try:
        fleet, _ = load_fleet(inventory)
        ctx = FleetContext.for_fleet(fleet)
        if device not in {d.id for d in fleet.active_devices}:
            raise PkiCommandError(
                f"{device}: not an active device of fleet {fleet.name} (fleet_devices)"
            )
        if ctx.pki.record(device) is None:
            raise PkiCommandError(f"{device} has no certificate yet: run the rollout first")
        entry = request_rekey(
            ctx.pki_settings.state_dir, device, "operator", datetime.now(UTC).replace(microsecond=0)
        )
    except (InventoryError, FileNotFoundError, PkiError) as exc:
        raise PkiCommandError(str(exc)) from None
    click.echo(
        f"re-key of {device} requested (request {entry.request[:12]}, since "
        f"{entry.requested_at:%Y-%m-%d %H:%M} UTC): the next rollout or "
        "`iotfleet pki deliver` asks the gateway for a CSR and signs it"
    )


@cli.command("deliver")
@click.argument("devices", nargs=-1)
@required_inventory("its brokers and devices")
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Publish every active device's certificate, not only renewals not delivered.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds to wait, per broker, for online gateways to report the new serial.",
)
def deliver_command(devices: tuple[str, ...], inventory: Path, every: bool, wait: float) -> None:
    """Deliver renewed device certificates over MQTT (retained, QoS 1, on each device's own
    certificate topic) and record which certificate each gateway reports using.

    No passphrase needed. The next PKI deploy revokes a renewed device's old certificate once
    the device was seen using the new one. Re-keys in progress (`iotfleet pki rekey`) are
    asked and their CSRs signed (needs the CA passphrase then). Exit 1 if a delivery failed on
    every broker or a CSR was refused.
    """
    from iotfleet.fleet.cert_delivery import DeliveryError, deliver_certificates
    from iotfleet.fleet.context import FleetContext
    from iotfleet.fleet.inventory import load_fleet
    from iotfleet.fleet.rekey_delivery import run_rekeys
    from iotfleet.fleet.secrets import SecretError
    from iotfleet.model import InventoryError

    try:
        fleet, _ = load_fleet(inventory)
        ctx = FleetContext.for_fleet(fleet, read_only=True)
        chosen: list[str] | None = list(devices) or None
        if every:
            chosen = [device.id for device in fleet.active_devices]
        rekeys = run_rekeys(ctx, list(devices) or None, wait=wait)
        results = deliver_certificates(ctx, chosen, wait=wait)
    except (InventoryError, SecretError, FileNotFoundError, DeliveryError, PkiError) as exc:
        raise PkiCommandError(str(exc)) from None
    if rekeys:
        _render_rekeys(rekeys)
    refused = any(r.refused for r in rekeys)
    if not results and rekeys:
        if refused:
            raise SystemExit(EXIT_ATTENTION)
        return
    if not results:
        click.echo(
            "nothing to deliver: every renewed certificate was delivered already "
            "(--all publishes them again)"
        )
        return
    table = Table(title="certificate delivery", title_justify="left")
    for column in ("device", "serial", "delivered to", "gateway", "in use"):
        table.add_column(column)
    for r in results:
        in_use = "-" if r.in_use is None else ("[green]new[/]" if r.switched else r.in_use[:12])
        delivered = ", ".join(r.brokers) or "[red]" + "; ".join(r.failures) + "[/]"
        table.add_row(
            r.device, r.serial[:12], delivered, "online" if r.online else "offline", in_use
        )
    Console().print(table)
    if refused or any(not r.delivered for r in results):
        raise SystemExit(EXIT_ATTENTION)


def _render_rekeys(rekeys: list[Any]) -> None:
    table = Table(title="re-key over the air", title_justify="left")
    for column in ("device", "reason", "gateway", "CSR", "new certificate", "in use"):
        table.add_column(column)
    for r in rekeys:
        csr = f"[red]refused[/]: {r.refused}" if r.refused else r.csr
        table.add_row(
            r.device,
            r.reason,
            "online" if r.online else "offline",
            csr,
            (r.serial or "-")[:12],
            "[green]yes[/]" if r.switched else "-",
        )
    Console().print(table)
    for r in rekeys:
        if r.refused:
            click.echo(
                f"WARNING: re-key of {r.device} refused, nothing signed: {r.refused}", err=True
            )


@cli.command("refresh-crl")
@required_inventory("PKI settings and brokers")
@click.option("--force", is_flag=True, help="Re-sign even outside the refresh window.")
@click.option("--no-push", is_flag=True, help="Only re-sign; do not run deploy/crl.py.")
def refresh_crl_command(inventory: Path, force: bool, no_push: bool) -> None:
    """Keep the CRL from lapsing between rollouts (what the CRL timer runs daily).

    Re-signs the CRL when its nextUpdate is within pki_crl_refresh_before_days (needs the CA
    passphrase), then pushes only the CRL to every broker: `pyinfra -y INVENTORY deploy/crl.py`
    (a broker that has it already is left alone). Exit 1 if the push failed.
    """
    import subprocess
    import sys

    from iotfleet.pki import refresh_crl

    settings = _settings_from_inventory(inventory)
    try:
        next_update = refresh_crl(settings, force=force)
    except PkiError as exc:
        raise PkiCommandError(str(exc)) from None
    if next_update is None:
        click.echo("CRL still fresh: not re-signed")
    else:
        click.echo(f"CRL re-signed, valid until {next_update:%Y-%m-%d %H:%M} UTC")
    if no_push:
        return
    try:
        crl_deploy = project_file("deploy/crl.py")
    except FileNotFoundError as exc:
        raise PkiCommandError(str(exc)) from None
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    pushed = subprocess.run(
        [pyinfra, "-y", str(inventory.resolve()), str(crl_deploy)],
        cwd=PROJECT_DIR, check=False,
    )  # fmt: skip
    if pushed.returncode != 0:
        raise SystemExit(EXIT_ATTENTION)
