"""`iotfleet keys` documents every key the model accepts, each with a description."""

from __future__ import annotations

from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.model import known_keys
from iotfleet.model.keys import inventory_keys


def test_every_accepted_key_is_documented_with_a_description() -> None:
    docs = {doc.key: doc for doc in inventory_keys()}
    assert known_keys() <= set(docs)
    assert all(doc.description for doc in docs.values()), [
        key for key, doc in docs.items() if not doc.description
    ]


def test_cli_filters_by_prefix() -> None:
    result = CliRunner().invoke(cli, ["keys", "firewall_"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "firewall_ssh_sources" in result.output
    assert "mosquitto_listeners" not in result.output
