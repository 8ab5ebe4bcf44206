"""Who the outside probes connect as: fleet identities chosen deterministically, and canaries.

* the probe device and its peer (whose topics it must not touch): iotfleet's own probe
  identities (``iotfleet.model.own_identities``), which every rollout issues and allows on every
  broker, so no real device is ever disconnected by a check; ``--probe-device`` picks a real device
  instead (and its peer is the next active device by id);
* a password user for password listeners and a certificate+password user for two-factor
  listeners: the probe device (it has both), else the first active user that has what the
  listener asks for;
* for the factor matrix, one identity of every kind: the probe devices, the first active
  client of each ``auth``, the first active device with and without a password. Attempts
  that must get in are made only as the probe identities; the real ones are only seen
  refused (a refused login disconnects nobody);
* certificates every broker must refuse: the revoked and expired canaries kept beside the PKI
  (``iotfleet.fleet.pki``) and one from a foreign CA, made once and kept with them.

With ``--probe-device`` a probe connects as a real identity: with ``use_username_as_clientid``
that device, if online, is disconnected once (its client id is taken) and reconnects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from iotfleet.check.mqtt_probe import Identity
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import (
    EXPIRED_CANARY,
    REVOKED_CANARY,
    foreign_canary_paths,
    load_canary,
)
from iotfleet.model import Fleet, Listener
from iotfleet.model.own_identities import PROBE_DEVICE, PROBE_DEVICES, PROBE_PEER
from iotfleet.pki import PkiStore, StateError

REFUSED_KINDS = ("foreign", "revoked", "expired")


@dataclass(frozen=True)
class ProbeCast:
    """Names of the identities that play each part in the probes (None: nobody can)."""

    device: str | None
    peer: str | None
    password_user: str | None
    two_factor_user: str | None


def _has_certificate(pki: PkiStore, name: str) -> bool:
    try:
        pki.certificate_pem(name)
    except LookupError:  # NotIssuedError: never issued, or revoked
        return False
    return True


def choose_cast(
    fleet: Fleet, pki: PkiStore, passwords: set[str], probe_device: str | None = None
) -> ProbeCast:
    """Pick the probe identities; the same inventory always gives the same cast.

    Only as many certificates are looked up as needed (a fleet may have 10,000 devices).
    """
    if probe_device is None and all(_has_certificate(pki, p) for p in PROBE_DEVICES):
        probe_login = PROBE_DEVICE if PROBE_DEVICE in passwords else None
        return ProbeCast(PROBE_DEVICE, PROBE_PEER, probe_login, probe_login)
    active = sorted(d.id for d in fleet.active_devices)
    if probe_device is not None:
        if probe_device not in active or not _has_certificate(pki, probe_device):
            raise LookupError(
                f"--probe-device {probe_device}: not an active device with a certificate"
            )
        active.remove(probe_device)
        active.insert(0, probe_device)
    devices: list[str] = []
    for name in active:
        if _has_certificate(pki, name):
            devices.append(name)
            if len(devices) == 2:
                break
    device = devices[0] if devices else None
    peer = devices[1] if len(devices) > 1 else None
    with_password = sorted(
        [d.id for d in fleet.active_devices if d.id in passwords]
        + [c.name for c in fleet.active_clients if c.name in passwords]
    )
    certified = {d.id for d in fleet.active_devices} | {
        c.name for c in fleet.active_clients if c.has_certificate
    }
    two_factor = next(
        (n for n in with_password if n in certified and _has_certificate(pki, n)), None
    )
    return ProbeCast(
        device=device,
        peer=peer,
        password_user=with_password[0] if with_password else None,
        two_factor_user=two_factor,
    )


def matrix_names(fleet: Fleet, pki: PkiStore, passwords: set[str], cast: ProbeCast) -> list[str]:
    """One identity of every kind, for the factor matrix (the probe cast first)."""
    names = [n for n in (cast.device, cast.peer) if n is not None]
    for auth in ("certificate", "certificate+password", "password"):
        client = next(
            (
                c.name
                for c in sorted(fleet.active_clients, key=lambda c: c.name)
                if c.auth == auth and (not c.has_certificate or _has_certificate(pki, c.name))
            ),
            None,
        )
        if client is not None:
            names.append(client)
    for with_password in (False, True):
        device = next(
            (
                d.id
                for d in sorted(fleet.active_devices, key=lambda d: d.id)
                if (d.id in passwords) == with_password
                and d.id not in names
                and _has_certificate(pki, d.id)
            ),
            None,
        )
        if device is not None:
            names.append(device)
    return names


def certified_names(pki: PkiStore, names: list[str]) -> set[str]:
    """Those of ``names`` that have a valid certificate."""
    return {n for n in names if _has_certificate(pki, n)}


def listener_user(cast: ProbeCast, listener: Listener) -> str | None:
    """The identity that can log in on ``listener`` (it then probes that listener's ACL)."""
    if listener.auth == "certificate":
        return cast.device
    if listener.auth == "password":
        return cast.password_user
    return cast.two_factor_user


def credentials(ctx: FleetContext, name: str, listener: Listener) -> Identity:
    """What ``name`` presents on ``listener``: certificate, password, or both."""
    certificate = key = None
    username = password = None
    if listener.requires_certificate:
        certificate, key = ctx.pki.certificate_pem(name), ctx.pki.private_key_pem(name)
    if listener.requires_password:
        username, password = name, ctx.passwords[name].get_secret_value()
    return Identity(certificate, key, username, password)


def refused_certificate(ctx: FleetContext, kind: str) -> Identity:
    """A certificate every broker must refuse: ``foreign``, ``revoked`` or ``expired``."""
    if kind == "foreign":
        cert, key = foreign_canary(ctx.state_dir)
        return Identity(cert, key)
    name = {"revoked": REVOKED_CANARY, "expired": EXPIRED_CANARY}[kind]
    canary = load_canary(ctx.state_dir, name)
    return Identity(canary.certificate_pem, canary.private_key_pem)


def foreign_canary(state_dir: Path) -> tuple[bytes, bytes]:
    """(certificate, key) of the foreign-CA canary the rollout made (raises StateError before)."""
    cert_path, key_path, _ = foreign_canary_paths(state_dir)
    try:
        return cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"no {cert_path} yet: run the rollout first") from None
