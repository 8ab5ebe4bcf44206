"""Which factors let which identity in on which listener: the expected outcome of every login
attempt the factor matrix makes, derived from the inventory model alone.

An identity gets in only on a listener of its own kind, and only with every factor that
listener asks for:

* a client logs in with exactly what its ``auth`` says: a ``certificate+password`` client is
  refused on a password-only listener even with its right password, and on a certificate-only
  listener even with its own certificate (either alone is one factor of its two);
* a device always has a certificate (certificate listeners); a device with a password may
  also use password and certificate+password listeners;
* a factor the listener does not ask for changes nothing (a certificate shown to a
  password-only listener is not an identity there);
* a certificate and a login of two different identities never make one identity: on a
  certificate+password listener the certificate's CN must be the username.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from iotfleet.model import Fleet
from iotfleet.model.settings import Auth

CERTIFICATE, PASSWORD = "certificate", "password"
Factors = frozenset[str]
REQUIRED: dict[str, Factors] = {
    "certificate": frozenset({CERTIFICATE}),
    "password": frozenset({PASSWORD}),
    "certificate+password": frozenset({CERTIFICATE, PASSWORD}),
}
ALL_AUTHS: tuple[Auth, ...] = ("certificate", "password", "certificate+password")


@dataclass(frozen=True)
class Principal:
    """One identity of the fleet as the factor matrix sees it."""

    name: str
    who: str  # how messages name it: "client control-room", "probe device iotfleet-probe-1"
    auth: Auth | None  # a client's declared auth; None for a device
    certificate: bool  # it has a valid certificate of the fleet PKI
    password: bool  # it has an MQTT password
    allowed: bool = True  # the inventory allows it on this broker (``brokers:``)

    @property
    def factors(self) -> Factors:
        return frozenset(
            f for f, has in ((CERTIFICATE, self.certificate), (PASSWORD, self.password)) if has
        )

    @property
    def listener_auths(self) -> frozenset[str]:
        """Kinds of listener this identity may log in on."""
        if self.auth is not None:
            return frozenset({self.auth})
        kinds = {"certificate"} if self.certificate else set()
        if self.password:
            kinds.add("password")
            if self.certificate:
                kinds.add("certificate+password")
        return frozenset(kinds)

    def describe(self) -> str:
        kind = f"auth {self.auth}" if self.auth else "device"
        has = " and ".join(sorted(self.factors)) or "no credentials"
        return f"{self.who} ({kind}, has {has})"


def admitted(listener_auth: str, principal: Principal, factors: Iterable[str]) -> bool:
    """Whether ``principal`` presenting ``factors`` (its own) must get in on a listener of
    ``listener_auth``."""
    return (
        principal.allowed
        and listener_auth in principal.listener_auths
        and REQUIRED[listener_auth] <= frozenset(factors)
    )


def why_refused(listener_auth: str, principal: Principal, factors: Iterable[str]) -> str:
    """The inventory's reason an attempt must be refused (for the failure message)."""
    shown = frozenset(factors)
    if not principal.allowed:
        return f"the inventory does not allow {principal.name} on this broker"
    if listener_auth not in principal.listener_auths:
        kinds = " or ".join(sorted(principal.listener_auths)) or "no"
        return f"it may log in only on {kinds} listeners, this one is {listener_auth}"
    missing = sorted(REQUIRED[listener_auth] - shown)
    return f"the listener asks for {' and '.join(sorted(REQUIRED[listener_auth]))}; " + (
        f"{' and '.join(missing)} missing"
    )


def factor_sets(principal: Principal) -> list[Factors]:
    """Every non-empty combination of the factors ``principal`` has: each alone, then both."""
    have = sorted(principal.factors)
    sets = [frozenset({f}) for f in have]
    if len(have) > 1:
        sets.append(frozenset(have))
    return sets


def describe_factors(factors: Iterable[str]) -> str:
    shown = sorted(factors)
    if shown == [CERTIFICATE]:
        return "its certificate alone"
    if shown == [PASSWORD]:
        return "its password alone"
    return "its certificate and its password"


@dataclass(frozen=True)
class Attempt:
    principal: Principal
    factors: Factors
    expected: bool  # True: must get in; False: must be refused


def matrix(listener_auth: str, principals: Iterable[Principal]) -> list[Attempt]:
    """Every attempt of every principal on a listener of ``listener_auth``."""
    return [
        Attempt(p, factors, admitted(listener_auth, p, factors))
        for p in principals
        for factors in factor_sets(p)
    ]


def mixed_pairs(
    principals: Iterable[Principal], per_login: int = 4
) -> list[tuple[Principal, Principal]]:
    """(certificate owner, login owner) pairs of different identities, for listeners that take
    both factors: every login with up to ``per_login`` other identities' certificates,
    devices' and clients' alternately."""
    people = list(principals)
    pairs: list[tuple[Principal, Principal]] = []
    for login in (p for p in people if p.password):
        others = [p for p in people if p.certificate and p.name != login.name]
        devices = [p for p in others if p.auth is None]
        clients = [p for p in others if p.auth is not None]
        mixed = [p for pair in zip(devices, clients, strict=False) for p in pair]
        rest = devices[len(clients) :] + clients[len(devices) :]
        pairs.extend((owner, login) for owner in (mixed + rest)[:per_login])
    return pairs


def principals_of(
    fleet: Fleet,
    broker: str,
    names: Iterable[str],
    passwords: set[str],
    certified: set[str],
    who: dict[str, str],
) -> list[Principal]:
    """Principals for ``names`` (devices, clients or probe identities) on ``broker``."""
    clients = {c.name: c for c in fleet.active_clients}
    allowed = fleet.users_of(broker)
    result = []
    for name in names:
        client = clients.get(name)
        result.append(
            Principal(
                name=name,
                who=who[name],
                auth=client.auth if client is not None else None,
                certificate=name in certified,
                password=name in passwords,
                allowed=name in allowed or name not in {*clients, *(d.id for d in fleet.devices)},
            )
        )
    return result
