"""``iotfleet keys``: the inventory keys, their defaults and what they mean."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from iotfleet.model.keys import inventory_keys


@click.command("keys")
@click.argument("prefix", required=False, default="")
def cli(prefix: str) -> None:
    """List inventory keys (optionally only those starting with PREFIX, e.g. mosquitto_)."""
    table = Table(title="iotfleet inventory keys", title_justify="left")
    table.add_column("key", no_wrap=True)
    table.add_column("default", overflow="fold", max_width=40)
    table.add_column("meaning", overflow="fold")
    for doc in inventory_keys():
        if doc.key.startswith(prefix):
            table.add_row(doc.key, doc.default, doc.description)
    Console().print(table)
