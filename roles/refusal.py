"""How a role stops a rollout before any operation: one clear message, no traceback.

pyinfra loads the deploy files of all hosts at once, each in its own greenlet: a SystemExit
raised in one of them kills it with a traceback printed by gevent. A ``PyinfraError`` is what
pyinfra expects there: it prints "pyinfra error: <message>" once and exits 1. Under pyinfra's
CLI the refusal is a ``CliError`` too, which the CLI prints as it is: without "in <file> line
N", a place in iotfleet's code that tells the user nothing (the message names host and key).
"""

from __future__ import annotations

import sys
from typing import Any

from pyinfra.api.exceptions import PyinfraError


def _cli_error_class() -> Any:
    """pyinfra's ``CliError`` when its CLI runs this process, else ``Exception``: importing
    ``pyinfra_cli`` ourselves would gevent-patch the whole process (tests, the API)."""
    cli_exceptions = sys.modules.get("pyinfra_cli.exceptions")
    return Exception if cli_exceptions is None else cli_exceptions.CliError


class RolloutRefusedError(PyinfraError, _cli_error_class()):  # type: ignore[misc]
    """The rollout cannot go on as asked; the message says what and where (starts with
    ``iotfleet:``)."""
