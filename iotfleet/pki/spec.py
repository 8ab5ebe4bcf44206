"""What the inventory says should exist (IdentitySpec), engine settings, and their validation.

Validation is pure: it runs on every spec before the engine touches the state directory, so a
bad inventory never leaves a half-reconciled PKI behind.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509

from iotfleet.model.fleet import PkiConfig
from iotfleet.pki.errors import PkiInputError

Kind = Literal["broker", "device", "client", "bridge"]
KeyType = Literal["ec-p256", "rsa-2048"]

KINDS: tuple[str, ...] = ("broker", "device", "client", "bridge")
KEY_TYPES: tuple[str, ...] = ("ec-p256", "rsa-2048")

# RFC 5280 reason names we accept. certificateHold/removeFromCRL are left out on purpose: holds are
# reversible and we never un-revoke; aACompromise concerns attribute certificates.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}

# An identity name is the certificate CN, the MQTT client id / username, part of file names and of
# topic ACL patterns (%c/%u). MQTT would allow far more, so we keep a safe subset: no wildcards
# (+ #), no topic separator (/), no $ (reserved for $SYS), no spaces or shell/URL metacharacters,
# no leading '.' or '-' (hidden files, option look-alikes). 64 chars is X.509's ub-common-name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1..64 characters from [A-Za-z0-9._-], starting with a letter or digit"

_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CA_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,47}")

MIN_PASSPHRASE_CHARS = 12


@dataclass(frozen=True)
class IdentitySpec:
    """One identity the inventory says should exist.

    Args:
        name: unique; the certificate CN; for devices/clients the MQTT client id / username.
        kind: "broker" (server certificate), "device"/"client" (client certificate) or
            "bridge" (the client certificate an edge broker's bridge logs in with at its cores).
        dns_names: brokers only: SAN DNS names.
        ip_addresses: brokers only: SAN IP addresses.
        key_type: "ec-p256" (default, fast on ESP8266 BearSSL) or "rsa-2048".
        revoked_reason: set when the inventory marks the identity revoked (RFC 5280 reason name).
    """

    name: str
    kind: Kind
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    key_type: KeyType = "ec-p256"
    revoked_reason: str | None = None


# The engine's defaults for what the inventory can set are the inventory's (``pki_*`` keys):
# one source for each, whether the PKI is driven by an inventory or by ``--state-dir``.
_INVENTORY = PkiConfig()


@dataclass(frozen=True)
class PkiSettings:
    """Engine settings. Validity periods are in days.

    The passphrase protecting the CA keys comes from ``passphrase_file`` when set (a 0600 file),
    otherwise from the environment variable ``passphrase_env``; never from the inventory.
    """

    state_dir: Path
    passphrase_env: str = _INVENTORY.passphrase_env
    passphrase_file: Path | None = None
    ca_name: str = _INVENTORY.ca_name
    root_days: int = 7300
    intermediate_days: int = 1825
    broker_days: int = _INVENTORY.broker_days
    device_days: int = _INVENTORY.device_days
    client_days: int = _INVENTORY.client_days
    renew_before_days: int = _INVENTORY.renew_before_days
    # Re-certify the intermediate (same key) this long before it expires (needs the root key).
    intermediate_renew_before_days: int = 180
    crl_days: int = _INVENTORY.crl_days
    crl_refresh_before_days: int = _INVENTORY.crl_refresh_before_days
    # The root's CRL (covering the intermediate) is signed only when the root key is online.
    root_crl_days: int = 365
    # Devices in their renewal window get a new certificate on the same key (delivered over
    # MQTT; the old one stays valid until the device uses the new one) instead of a new key.
    renew_same_key: bool = _INVENTORY.device_renew_same_key
    # Worker processes for large batches (key generation + signing); None = one per CPU.
    workers: int | None = None
    # The passphrase itself, already read (a generated one a planning run has not written yet);
    # ``passphrase_file`` then only says where it is kept.
    passphrase_value: bytes | None = field(default=None, repr=False, compare=False)

    def days_for(self, kind: str) -> int:
        """Validity of a new leaf certificate of this kind."""
        return {"broker": self.broker_days, "device": self.device_days}.get(kind, self.client_days)


def validate_settings(settings: PkiSettings) -> None:
    """Raise PkiInputError when settings cannot work (e.g. a renewal window > a validity)."""
    problems: list[str] = []
    if not _CA_NAME_RE.fullmatch(settings.ca_name):
        problems.append(
            f"settings.ca_name {settings.ca_name!r}: 1..48 characters from [A-Za-z0-9 ._-]"
        )
    for attr in (
        "root_days",
        "intermediate_days",
        "broker_days",
        "device_days",
        "client_days",
        "crl_days",
        "root_crl_days",
    ):
        if getattr(settings, attr) < 1:
            problems.append(f"settings.{attr} must be at least 1 day")
    leaf_min = min(settings.broker_days, settings.device_days, settings.client_days)
    if not 0 <= settings.renew_before_days < leaf_min:
        problems.append(
            f"settings.renew_before_days ({settings.renew_before_days}) must be >= 0 and shorter "
            f"than the shortest leaf validity ({leaf_min} days), or every run would renew"
        )
    if not 0 <= settings.crl_refresh_before_days < settings.crl_days:
        problems.append(
            f"settings.crl_refresh_before_days ({settings.crl_refresh_before_days}) must be >= 0 "
            f"and shorter than settings.crl_days ({settings.crl_days})"
        )
    if not 0 <= settings.intermediate_renew_before_days < settings.intermediate_days:
        problems.append(
            "settings.intermediate_renew_before_days must be shorter than intermediate_days"
        )
    if settings.intermediate_days > settings.root_days:
        problems.append("settings.intermediate_days must not exceed settings.root_days")
    if settings.workers is not None and settings.workers < 1:
        problems.append("settings.workers must be at least 1 (or None for one per CPU)")
    if problems:
        raise PkiInputError(problems)


def validate_name(name: object) -> str | None:
    """Return a problem description when ``name`` is not a safe identity name, else None."""
    if not isinstance(name, str):
        return f"name must be a string, not {type(name).__name__}"
    if not NAME_RE.fullmatch(name):
        return f"name {name!r} is not a valid MQTT identity ({NAME_RULE}; no + # / $ or spaces)"
    return None


def validate_reason(reason: object) -> str | None:
    """Return a problem description when ``reason`` is not an accepted RFC 5280 reason name."""
    if isinstance(reason, str) and reason in REVOCATION_REASONS:
        return None
    return f"unknown revocation reason {reason!r}; use one of: {', '.join(REVOCATION_REASONS)}"


def _dns_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"DNS name {value!r} is not a string"
    if value != value.lower() or not value or len(value) > 253 or value.endswith("."):
        return f"invalid DNS name {value!r} (lowercase, no trailing dot, at most 253 characters)"
    if not all(_DNS_LABEL_RE.fullmatch(label) for label in value.split(".")):
        return (
            f"invalid DNS name {value!r} (labels of 1..63 letters, digits and inner hyphens; "
            "no wildcards, no underscores)"
        )
    return None


def _ip_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"IP address {value!r} is not a string"
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        return f"invalid IP address {value!r}"
    if str(parsed) != value:
        return f"IP address {value!r} is not in canonical form (write {str(parsed)!r})"
    return None


def _sequence_problem(field_name: str, value: object) -> str | None:
    if isinstance(value, str | bytes) or not isinstance(value, tuple | list):
        return f"{field_name} must be a tuple of strings, not {type(value).__name__}"
    return None


def spec_problems(spec: IdentitySpec) -> list[str]:
    """Every problem with one spec, each phrased without the identity prefix."""
    if (
        type(spec.dns_names) is tuple
        and type(spec.ip_addresses) is tuple
        and not spec.dns_names
        and not spec.ip_addresses
        and spec.revoked_reason is None
        and spec.kind in KINDS
        and spec.kind != "broker"
        and spec.key_type in KEY_TYPES
        and isinstance(spec.name, str)
        and NAME_RE.fullmatch(spec.name)
    ):
        return []  # the common case (a device), which every check below passes
    problems: list[str] = []
    name_problem = validate_name(spec.name)
    if name_problem:
        problems.append(name_problem)
    if spec.kind not in KINDS:
        problems.append(f"kind {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.key_type not in KEY_TYPES:
        problems.append(f"key_type {spec.key_type!r} is not one of {', '.join(KEY_TYPES)}")
    for field_name, checker in (("dns_names", _dns_problem), ("ip_addresses", _ip_problem)):
        value = getattr(spec, field_name)
        seq_problem = _sequence_problem(field_name, value)
        if seq_problem:
            problems.append(seq_problem)
            continue
        problems.extend(p for p in map(checker, value) if p)
        if len(set(value)) != len(value):
            problems.append(f"{field_name} lists the same entry twice")
    has_sans = bool(spec.dns_names) or bool(spec.ip_addresses)
    if spec.kind == "broker" and not has_sans:
        problems.append(
            "a broker needs at least one dns_names or ip_addresses entry "
            "(clients verify the broker by its SAN)"
        )
    if spec.kind != "broker" and has_sans:
        problems.append(f"dns_names/ip_addresses are for brokers only, not for a {spec.kind}")
    if spec.revoked_reason is not None:
        reason_problem = validate_reason(spec.revoked_reason)
        if reason_problem:
            problems.append(f"revoked_reason: {reason_problem}")
    return problems


def validate_identities(identities: Sequence[IdentitySpec]) -> list[IdentitySpec]:
    """Check every spec and the set as a whole; raise PkiInputError listing all problems."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for position, spec in enumerate(identities, start=1):
        if not isinstance(spec, IdentitySpec):
            problems.append(
                f"identity #{position}: expected an IdentitySpec, got {type(spec).__name__}"
            )
            continue
        own = spec_problems(spec)
        if own:
            where = f"identity #{position} ({spec.name!r})"
            problems.extend(f"{where}: {p}" for p in own)
        if isinstance(spec.name, str):
            # Case-insensitive: names differing only by case would collide on case-insensitive
            # file systems and confuse people reading ACLs.
            folded = spec.name.lower()
            if folded in seen:
                problems.append(
                    f"identity #{position} ({spec.name!r}): duplicate name (already used by "
                    f"identity #{seen[folded]}; names are compared case-insensitively)"
                )
            else:
                seen[folded] = position
    if problems:
        raise PkiInputError(problems)
    return list(identities)


def spec_fingerprint(spec: IdentitySpec) -> str:
    """A short digest of what the certificate encodes; a change means the cert must be re-issued."""
    try:
        return _fingerprint(spec.kind, tuple(spec.dns_names), tuple(spec.ip_addresses),
                            spec.key_type)  # fmt: skip
    except TypeError:  # an unhashable part (a spec that failed validation)
        return _fingerprint.__wrapped__(spec.kind, spec.dns_names, spec.ip_addresses, spec.key_type)


@functools.lru_cache(maxsize=1024)  # devices of a fleet share a handful of fingerprints
def _fingerprint(
    kind: str, dns_names: Sequence[str], ip_addresses: Sequence[str], key_type: str
) -> str:
    canonical = "|".join(
        (kind, ",".join(sorted(dns_names)), ",".join(sorted(ip_addresses)), key_type)
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
