"""Who may log in with a password on which listener: one password file per listener.

A shared file would let a ``certificate+password`` client log in with its password alone on a
password listener. Each listener's file therefore holds only the identities whose ``auth``
allows a password *there*. Used by the rollout (to render the files) and by the checks (to
compare usernames, never hashes).
"""

from __future__ import annotations

from iotfleet.model import Fleet, Listener
from iotfleet.model.own_identities import PROBE_PASSWORD_USERS, health_identity_name


def password_users(fleet: Fleet, broker_name: str, listener: Listener) -> set[str]:
    """Usernames that belong in the password file of ``listener`` on ``broker_name``.

    - ``password`` listener: clients with ``auth: password``;
    - ``certificate+password`` listener: clients with ``auth: certificate+password``;
    - both: active devices that have a password, the password probe, the health identity.
    """
    if not listener.requires_password:
        return set()
    allowed = fleet.users_of(broker_name)
    users = {
        c.name
        for c in fleet.active_clients
        if c.name in allowed and c.password is not None and c.auth == listener.auth
    }
    users |= {d.id for d in fleet.active_devices if d.id in allowed and d.password is not None}
    users |= set(PROBE_PASSWORD_USERS)
    users.add(health_identity_name(broker_name))
    return users
