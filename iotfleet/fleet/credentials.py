"""MQTT passwords of the fleet: resolved once, checked against every broker's minimum."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from iotfleet.device.image import generate_wifi_passphrases
from iotfleet.fleet.secrets import SecretError, SecretStore
from iotfleet.model import Fleet, InventoryError, Problem
from iotfleet.model.own_identities import PROBE_PASSWORD_USERS, health_identity_name

if TYPE_CHECKING:  # the context resolves its passwords from here
    from iotfleet.fleet.context import FleetContext


def password_slot(username: str) -> str:
    """Where a generated password of ``username`` is kept in the secret store."""
    return f"mqtt-password/{username}"


def mqtt_passwords(fleet: Fleet, store: SecretStore) -> dict[str, SecretStr]:
    """``{username: password}`` for every active device and client that has a password.

    Raises ``InventoryError`` naming the owner and key when a secret is missing or shorter than
    a broker's ``mosquitto_password_min_length`` (brokers without password listeners excepted).
    """
    problems: list[Problem] = []
    passwords: dict[str, SecretStr] = {}
    owners = [
        *((f"device {d.id}", d.id, d.password) for d in fleet.active_devices),
        *((f"client {c.name}", c.name, c.password) for c in fleet.active_clients),
    ]
    for where, username, ref in owners:
        if ref is None:
            continue
        try:
            passwords[username] = store.resolve(
                ref, password_slot(username), where=where, key="password"
            )
        except SecretError as exc:
            problems.append(Problem(where, "password", str(exc).split(": ", 2)[-1]))
    for broker in fleet.brokers:
        if not any(listener.requires_password for listener in broker.mosquitto.listeners):
            continue
        minimum = broker.mosquitto.password_min_length
        for where, username, _ in owners:
            secret = passwords.get(username)
            if secret is not None and len(secret.get_secret_value()) < minimum:
                problems.append(
                    Problem(
                        where,
                        "password",
                        f"shorter than {minimum} characters, the minimum of broker "
                        f"{broker.name} (mosquitto_password_min_length)",
                    )
                )
    if problems:
        raise InventoryError(problems)
    for probe in PROBE_PASSWORD_USERS:
        passwords[probe] = SecretStr(store.generated(password_slot(probe)))
    return passwords


def health_password(store: SecretStore, broker_name: str) -> SecretStr:
    """Generated password of the broker's own health-check identity."""
    return SecretStr(store.generated(password_slot(health_identity_name(broker_name))))


# Generated once per fleet (0600 in its state dir): the key the password salts derive from.
SALT_KEY_SLOT = "mosquitto/password-salt-key"


def password_salt_key(store: SecretStore) -> bytes:
    """The fleet's key for deriving password file salts (``derive_salt``)."""
    return store.generated(SALT_KEY_SLOT).encode()


def rendering_secrets(ctx: FleetContext) -> None:
    """Generate (into a planning run's stage) every secret the hosts' files are rendered
    with: each broker's health password, the salt key and the stations' generated Wi-Fi
    passphrases. A plan then holds them all, rather than a host's rendering adding them after
    every host was given "nothing to commit" (they were then never kept, each run made new
    ones and reflashed the gateways)."""
    generate_wifi_passphrases(ctx)
    if not ctx.fleet.brokers:
        return
    password_salt_key(ctx.secrets)
    for broker in ctx.fleet.brokers:
        health_password(ctx.secrets, broker.name)
