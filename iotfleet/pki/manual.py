"""Operations a person (or a timer) runs: revoke one identity, renew the intermediate, keep the
CRL fresh."""

from __future__ import annotations

from datetime import datetime

from iotfleet.pki import fsio
from iotfleet.pki.ca import (
    CaCerts,
    chain_pem,
    check_ca_valid,
    issuer_from,
    load_root_key,
    pem,
    recertify_intermediate,
)
from iotfleet.pki.ca import load_issuer as _load_issuer
from iotfleet.pki.errors import CaExpiredError, PkiInputError, StateError
from iotfleet.pki.index import IndexRecord
from iotfleet.pki.keys import load_encrypted_key
from iotfleet.pki.passphrase import read_passphrase
from iotfleet.pki.reconciler import utc_now, within
from iotfleet.pki.spec import PkiSettings, validate_name, validate_reason, validate_settings
from iotfleet.pki.state import (
    dead_key_packs,
    load_state,
    locked_layout,
    remove_files,
    resign_leaf_crl,
    save_index,
    write_crl,
)


def revoke(
    settings: PkiSettings, name: str, reason: str, *, now: datetime | None = None
) -> IndexRecord:
    """Revoke the valid certificate of ``name`` now and re-sign the CRL.

    The inventory stays the source of truth: if it still lists ``name`` (not marked revoked),
    the next reconcile issues a fresh key and certificate (revoke-and-reissue).

    Args:
        settings: PKI settings (the passphrase is needed to sign the CRL).
        name: identity name (certificate CN).
        reason: RFC 5280 reason name, e.g. "keyCompromise", "cessationOfOperation".

    Returns:
        The revoked index record.
    """
    moment = utc_now(now)
    validate_settings(settings)
    problems = [p for p in (validate_name(name), validate_reason(reason)) if p]
    if problems:
        raise PkiInputError(problems)
    passphrase = read_passphrase(settings)
    with locked_layout(settings.state_dir) as layout:
        state = load_state(layout)
        if state.ca is None:
            raise StateError(f"no CA in {layout.root}: nothing to revoke")
        check_ca_valid(state.ca, moment)
        issuer = _load_issuer(layout, state.ca, passphrase)
        index = state.index
        if index.current(name) is None:
            raise PkiInputError(
                [
                    f"{name!r} has no valid certificate in {layout.root} "
                    "(never issued, or already revoked)"
                ]
            )
        record = index.revoke(name, reason, moment)
        # A device renewed on the same key may still hold its previous certificate: it carries
        # the same key, so it goes too (a keyCompromise must not leave it valid).
        for retiring in index.retiring(name):
            index.revoke_serial(retiring.serial, reason, moment)
        index.crl = resign_leaf_crl(
            layout, index, state.ca.intermediate, issuer.key, moment, settings.crl_days
        )
        save_index(layout, index)
        remove_files([*dead_key_packs(layout, index, [record.pack]), *state.leftovers])
        return record


def refresh_crl(
    settings: PkiSettings, *, now: datetime | None = None, force: bool = False
) -> datetime | None:
    """Re-sign the intermediate's CRL if its nextUpdate is within ``crl_refresh_before_days``
    (or it is missing or not the one the index recorded, or ``force``); nothing else changes.

    Returns the new nextUpdate, or None when the CRL was fresh and nothing was written. This is
    what the CRL timer runs every day, so the CRL never lapses between rollouts.
    """
    moment = utc_now(now)
    validate_settings(settings)
    passphrase = read_passphrase(settings)
    with locked_layout(settings.state_dir) as layout:
        state = load_state(layout)
        if state.ca is None:
            raise StateError(f"no CA in {layout.root}: run a reconcile (the PKI deploy) first")
        index = state.index
        due = (
            force
            or not state.crl_ok
            or index.crl is None
            or within(index.crl.next_update, moment, settings.crl_refresh_before_days)
        )
        if not due:
            return None
        check_ca_valid(state.ca, moment)
        issuer = _load_issuer(layout, state.ca, passphrase)
        index.crl = resign_leaf_crl(
            layout, index, state.ca.intermediate, issuer.key, moment, settings.crl_days
        )
        save_index(layout, index)
        return index.crl.next_update


def renew_intermediate(settings: PkiSettings, *, now: datetime | None = None) -> datetime:
    """Re-certify the intermediate's key with the root key (works even after it expired).

    Needs ``ca/root.key`` (bring the root online for this). Leaves stay valid: same key, same
    SKI. Afterwards redistribute ca/chain.pem. Returns the new intermediate's notAfter.
    """
    moment = utc_now(now)
    validate_settings(settings)
    passphrase = read_passphrase(settings)
    with locked_layout(settings.state_dir) as layout:
        state = load_state(layout)
        if state.ca is None:
            raise StateError(f"no CA in {layout.root}: run a reconcile first")
        if state.ca.root.not_valid_after_utc <= moment:
            check_ca_valid(state.ca, moment)  # raises the root-expired message
        root_key = load_root_key(layout, passphrase, "renewing the intermediate")
        intermediate_key = load_encrypted_key(layout.intermediate_key, passphrase)
        issuer_from(intermediate_key, state.ca.intermediate, layout)
        new_intermediate = recertify_intermediate(state.ca, root_key, settings, moment)
        if new_intermediate.not_valid_after_utc <= moment:
            raise CaExpiredError("the root CA expires before a new intermediate could start")
        certs = CaCerts(state.ca.root, new_intermediate, True)
        fsio.atomic_write(layout.intermediate_cert, pem(new_intermediate))
        fsio.atomic_write(layout.chain, chain_pem(certs))
        index = state.index
        index.crl = resign_leaf_crl(
            layout, index, new_intermediate, intermediate_key, moment, settings.crl_days
        )
        index.root_crl = write_crl(
            layout.root_crl,
            certs.root,
            root_key,
            [],
            index.root_crl,
            moment,
            settings.root_crl_days,
        )
        save_index(layout, index)
        remove_files(state.leftovers)
        return new_intermediate.not_valid_after_utc
