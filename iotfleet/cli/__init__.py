"""The ``iotfleet`` command. Each command group lives in its own module and is loaded lazily."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from iotfleet import __version__
from iotfleet.fs.errors import WriteError

# group name -> module exposing a click object named ``cli``
_GROUPS: dict[str, str] = {
    "lab": "iotfleet.cli.lab",
    "pki": "iotfleet.cli.pki",
    "check": "iotfleet.cli.check",
    "report": "iotfleet.cli.report",
    "gateway": "iotfleet.cli.gateway",
    "emulator": "iotfleet.cli.emulator",
    "classroom": "iotfleet.cli.classroom",
    "keys": "iotfleet.cli.keys",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, module in _GROUPS.items() if _module_exists(module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = _GROUPS.get(cmd_name)
        if module_name is None or not _module_exists(module_name):
            return None
        command = importlib.import_module(module_name).cli
        assert isinstance(command, click.Command)
        return command


def _module_exists(module_name: str) -> bool:
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="iotfleet")
def cli() -> None:
    """Secure MQTT fleets as code: lab, PKI, compliance checks, gateways."""


def main() -> None:
    try:
        cli()
    except WriteError as exc:
        # A full disk or a permission: one line naming the file and what was not done.
        click.echo(f"iotfleet: {exc}", err=True)
        sys.exit(2)
