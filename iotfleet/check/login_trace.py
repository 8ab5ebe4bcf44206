"""Failed logins are traceable: a refused login is in the broker's journal, naming who tried
from where (iotfleet's Mosquitto plugin logs each refusal at NOTICE)."""

from __future__ import annotations

import shlex
import time
from typing import Any

JOURNAL_WAIT = 5.0  # seconds journald may take to show the broker's line
# The plugin's words (roles/mosquitto/plugin/iotfleet_auth.c, refuse()).
REFUSAL = "iotfleet_auth: refused login of '{user}' from {source}"


def journal_problems(host: Any, user: str, source: str, listener_id: str) -> list[str]:
    """Why the refused login of ``user`` from ``source`` is not in the broker's journal.

    Args:
        host: the broker (a testinfra host, root over SSH).
        user: the username the refused login gave.
        source: the address it came from, as the broker saw it.
        listener_id: ``host:port``, for the message.
    """
    needle = REFUSAL.format(user=user, source=source)
    command = (
        "journalctl -u mosquitto --since=-15min -o cat --no-pager | "
        f"grep -F -- {shlex.quote(needle)} || true"
    )
    deadline = time.monotonic() + JOURNAL_WAIT
    while True:
        if needle in host.run(command).stdout:
            return []
        if time.monotonic() > deadline:
            return [
                f"a login refused on {listener_id} (user {user!r} from {source}) left no line "
                "in mosquitto's journal: failed logins are not traceable (iotfleet's plugin logs "
                "them at notice level: keep notice in mosquitto_log_types)"
            ]
        time.sleep(0.5)
