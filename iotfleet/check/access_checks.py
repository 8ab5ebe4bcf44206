"""Judge who may log in and what they may do: the listeners' password files and the ACL."""

from __future__ import annotations

from iotfleet.model import Fleet, Listener
from iotfleet.model.own_identities import PROBE_DEVICES, health_identity_name
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.acl import (
    acl_file,
    acl_rules,
    broker_identities,
    effective_rules,
    read_acl,
)
from iotfleet.mosquitto.logins import password_users


def password_file_problems(
    host: str, fleet: Fleet, broker_name: str, listener: Listener, usernames: list[str] | None
) -> list[str]:
    """The listener's password file holds exactly the identities allowed a password there."""
    path = layout.password_file(listener.port)
    if usernames is None:
        return [f"{path} (password file of listener {listener.port}) is missing on {host}"]
    expected = password_users(fleet, broker_name, listener)
    problems = []
    for user in sorted(set(usernames) - expected):
        problems.append(
            f"{path} on {host} lets {_owner(fleet, user, broker_name)} log in with a password "
            f"on listener {listener.port} ({listener.auth}), which the inventory does not"
        )
    for user in sorted(expected - set(usernames)):
        problems.append(
            f"{path} on {host} has no password for {_owner(fleet, user, broker_name)}, who "
            "the inventory lets log in there"
        )
    duplicates = sorted({u for u in usernames if usernames.count(u) > 1})
    if duplicates:
        problems.append(f"{path} on {host} lists {', '.join(duplicates)} more than once")
    return problems


def identities_file_problems(
    host: str, fleet: Fleet, broker_name: str, usernames: list[str] | None
) -> list[str]:
    """The plugin's identities file lists exactly the identities the broker holds: a name
    there is one the plugin lets in (on a certificate listener, the one check between a
    fleet certificate of another site and the ACL's patterns)."""
    path = layout.IDENTITIES_FILE
    if usernames is None:
        return [f"{path} (the identities iotfleet's plugin lets in) is missing on {host}"]
    expected = set(broker_identities(fleet, broker_name))
    problems = [
        f"{path} on {host} lets {_owner(fleet, user, broker_name)} in, which the inventory "
        "does not hold on this broker"
        for user in sorted(set(usernames) - expected)
    ]
    problems += [
        f"{path} on {host} lacks {_owner(fleet, user, broker_name)}, whom the inventory lets "
        "in there: the plugin refuses it"
        for user in sorted(expected - set(usernames))
    ]
    return problems


def _owner(fleet: Fleet, username: str, broker_name: str) -> str:
    if username in PROBE_DEVICES:
        return f"probe device {username}"
    if any(d.id == username for d in fleet.devices):
        return f"device {username}"
    if any(c.name == username for c in fleet.clients):
        return f"client {username}"
    if username == health_identity_name(broker_name):
        return f"health identity {username}"
    return f"user {username}"


_VERB = {"read": "read", "write": "write", "readwrite": "read and write", "deny": "be denied"}


def acl_problems(host: str, fleet: Fleet, broker_name: str, text: str) -> list[str]:
    """The ACL on the host grants exactly what the inventory grants: its device patterns and
    blocks, read the way Mosquitto applies them to each user."""
    found, general = read_acl(text)
    actual = found.users
    patterns = found.patterns
    wanted = acl_file(fleet, broker_name)
    problems = [
        f"the ACL on {host} has a rule for every client: '{line}' (not from the inventory)"
        for line in general
    ]
    problems += [
        f"the ACL on {host} has the pattern '{a} {t}' for every user (not from the inventory)"
        for a, t in patterns
        if (a, t) not in wanted.patterns
    ]
    problems += [
        f"the ACL on {host} lacks the device pattern '{a} {t}' (from the inventory)"
        for a, t in wanted.patterns
        if (a, t) not in patterns
    ]
    expected = acl_rules(fleet, broker_name)
    for user in sorted(set(actual) | set(expected)):
        who = _owner(fleet, user, broker_name)
        if user not in expected:
            grants = ", ".join(f"{a} {t}" for a, t in sorted(actual[user])) or "nothing"
            problems.append(
                f"the ACL on {host} has rules for {who}, who is not an active user of the "
                f"inventory ({grants})"
            )
            continue
        got, want = effective_rules(found, user), effective_rules(wanted, user)
        for access, topic in sorted(got - want):
            problems.append(
                f"the ACL on {host} lets {who} {_VERB[access]} '{topic}' "
                "(not granted by the inventory)"
            )
        for access, topic in sorted(want - got):
            problems.append(
                f"the ACL on {host} no longer lets {who} {_VERB[access]} '{topic}' "
                "(granted by the inventory)"
            )
    return problems
