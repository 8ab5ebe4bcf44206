"""Refuse a bad inventory before pyinfra connects to any host.

pyinfra runs ``config.py`` from the directory it is started in before it loads the inventory;
this project's ``config.py`` calls :func:`check_inventory_before_connecting`. It wraps the CLI's
``connect_all`` so that, once the inventory and its group data are loaded and before the first
host is contacted, the fleet is validated: every mistake of the whole inventory in one list,
then exit 1. Importing the roles also applies the pyinfra fixes iotfleet carries that early, so
Ctrl-C while pyinfra connects ends with a non-zero exit too. Without that config file (a user's
own project) the same validation runs when the deploy files load.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from iotfleet.roles.fleet_context import fleet_model

_WRAPPED = "_iotfleet_validates_first"


# pyinfra's own commands, whose arguments may end in .py without being deploy files.
_NOT_DEPLOYS = frozenset({"fact", "exec", "debug-inventory", "shell"})


def _runs_deploy_files() -> bool:
    """Whether this pyinfra command runs deploy files (as pyinfra decides: every argument a
    ``.py`` file), not a fact, exec or operation command."""
    context = click.get_current_context(silent=True)
    operations = [str(op) for op in (context.params.get("operations", ()) if context else ())]
    return (
        bool(operations)
        and operations[0] not in _NOT_DEPLOYS
        and all(op.endswith(".py") for op in operations)
    )


def _validated_first(connect_all: Callable[[Any], None]) -> Callable[[Any], None]:
    def connect_all_after_validation(state: Any) -> None:
        if _runs_deploy_files():
            fleet_model()  # raises RolloutRefusedError listing every problem; cached for the run
        connect_all(state)

    setattr(connect_all_after_validation, _WRAPPED, True)
    return connect_all_after_validation


def check_inventory_before_connecting() -> None:
    """Validate the fleet after pyinfra loads the inventory, before it connects to any host.

    Call it from the ``config.py`` of the directory pyinfra runs in; a no-op outside the
    pyinfra CLI or when already installed.

    **Example:**

    .. code:: python

        # config.py, next to your deploy.py
        from iotfleet.roles.preflight import check_inventory_before_connecting

        check_inventory_before_connecting()
    """
    cli: Any = sys.modules.get("pyinfra_cli.cli")
    connect_all = getattr(cli, "connect_all", None)
    if connect_all is None or getattr(connect_all, _WRAPPED, False):
        return
    cli.connect_all = _validated_first(connect_all)
