"""How a role stops a rollout before any operation: one clear message, no traceback.

pyinfra loads the deploy files of all hosts at once, each in its own greenlet: a SystemExit
raised in one of them kills it with a traceback printed by gevent. A ``PyinfraError`` is what
pyinfra expects there: it prints "pyinfra error: <message>" once and exits 1.
"""

from __future__ import annotations

from pyinfra.api.exceptions import PyinfraError


class RolloutRefusedError(PyinfraError):
    """The rollout cannot go on as asked; the message says what and where (starts with
    ``iotfleet:``)."""
