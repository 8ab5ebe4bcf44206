"""Make the PKI state match the inventory: issue, renew, revoke, keep the CRLs fresh.

Order of a run (everything that can fail on bad input fails before the first write):
1. validate settings and every spec, read the passphrase; lock; load and cross-check the state
   (index digests, files, CA validity), decrypt the intermediate key (a wrong passphrase fails
   here, on every run, not months later at the first renewal);
2. plan in memory;
3. write: new CA (if any), new keys and certificates (one sync for the batch), CA certificate
   changes, CRLs, then index.json (the commit point) and index.txt; finally remove the keys of
   certificates revoked in this run and files left by interrupted runs.
A run with nothing to do writes nothing at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509

from iotfleet.pki import fsio
from iotfleet.pki.ca import (
    CaCerts,
    chain_pem,
    check_ca_valid,
    create_ca,
    issuer_from,
    load_issuer,
    load_root_key,
    pem,
    recertify_intermediate,
    write_new_ca,
)
from iotfleet.pki.certs import BACKDATE, Issuer
from iotfleet.pki.clock import refuse_future_dated
from iotfleet.pki.delivery import Delivery, load_ledger
from iotfleet.pki.index import Index, IndexRecord
from iotfleet.pki.issue import IssueJob, PackBuilder, new_pack_name, sign_batch, start_workers
from iotfleet.pki.keys import PrivateKey
from iotfleet.pki.layout import StateLayout
from iotfleet.pki.passphrase import check_new_passphrase, read_passphrase
from iotfleet.pki.rekey import Rekey, load_rekeys, rekey_key_for, same_key
from iotfleet.pki.spec import (
    IdentitySpec,
    PkiSettings,
    spec_fingerprint,
    validate_identities,
    validate_settings,
)
from iotfleet.pki.state import (
    adopt_orphans,
    dead_key_packs,
    load_state,
    locked_layout,
    remove_files,
    resign_leaf_crl,
    save_index,
    write_crl,
)


@dataclass(frozen=True)
class ReconcileReport:
    """What a reconcile changed. ``changed`` is False exactly when no file was written."""

    issued: tuple[str, ...] = ()
    renewed: tuple[str, ...] = ()  # every renewal (same key or new)
    # Devices renewed on the same key: the previous certificate stays valid ("retiring") until
    # the gateway is seen using the new one (delivery ledger) or it expires. Other renewals
    # revoke the previous certificate as superseded at once.
    renewed_same_key: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()  # retiring certificates revoked (successor in use, or expired)
    revoked: tuple[str, ...] = ()  # left the inventory, or marked revoked there
    revoked_reasons: Mapping[str, str] = field(default_factory=dict)  # of ``revoked``
    crl_changed: bool = False
    root_crl_changed: bool = False
    ca_created: bool = False
    intermediate_renewed: bool = False
    files_repaired: int = 0  # leftovers of interrupted runs removed, index.txt regenerated
    warnings: tuple[str, ...] = ()
    # (certificate PEM, key PEM) of identities issued and revoked in this run (``issue_revoked``)
    captured: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)

    @property
    def changed(self) -> bool:
        return bool(
            self.issued
            or self.renewed
            or self.revoked
            or self.retired
            or self.crl_changed
            or self.root_crl_changed
            or self.ca_created
            or self.intermediate_renewed
            or self.files_repaired
        )

    def summary(self, *, planned: bool = False, names_up_to: int = 0) -> str:
        """One line for humans: what changed (``planned``: what will), or that nothing did.

        ``names_up_to``: list the identities of a kind of change when there are at most this
        many (``renew gw-0007``), else only count them.
        """
        labels = (
            ("issue", "issued"),
            ("renew", "renewed"),
            ("revoke", "revoked"),
            ("retire old certificate of", "old certificates retired"),
        )
        parts = []
        for (verb, past), names in zip(
            labels, (self.issued, self.renewed, self.revoked, self.retired), strict=True
        ):
            if not names:
                continue
            if planned and len(names) <= names_up_to:
                shown = [
                    f"{n} ({self.revoked_reasons[n]})" if n in self.revoked_reasons else n
                    for n in names
                ]
                parts.append(f"{verb} {', '.join(shown)}")
            else:
                parts.append(f"{verb if planned else past} {len(names)}")
        if self.ca_created:
            parts.insert(0, "create CA" if planned else "CA created")
        if self.intermediate_renewed:
            parts.append("renew intermediate" if planned else "intermediate renewed")
        if self.crl_changed:
            parts.append("re-sign CRL" if planned else "CRL re-signed")
        if self.files_repaired and planned:
            parts.append(f"repair {self.files_repaired} file(s)")
        return ", ".join(parts) if parts else "no change"


@dataclass
class _Plan:
    jobs: list[IssueJob] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    revocations: list[tuple[str, str]] = field(default_factory=list)  # incl. superseded
    revoked: list[str] = field(default_factory=list)  # removed from or marked in the inventory
    retire: list[str] = field(default_factory=list)  # same-key renewals: keep the old one valid
    retirements: list[tuple[int, str]] = field(default_factory=list)  # (serial, reason)
    retired: list[str] = field(default_factory=list)
    issue_revoked: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    warnings: list[str] = field(default_factory=list)


def utc_now(now: datetime | None) -> datetime:
    """``now`` (tests move time with it) or the clock, in UTC, whole seconds."""
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=0)


def within(deadline: datetime, now: datetime, days: int) -> bool:
    """True when ``deadline`` is at most ``days`` away (or past)."""
    return deadline - now <= timedelta(days=days)


def reconcile(
    settings: PkiSettings,
    identities: Sequence[IdentitySpec],
    *,
    now: datetime | None = None,
    issue_revoked: Collection[str] = (),
    with_issuer: Callable[[Issuer, CaCerts, datetime], None] | None = None,
) -> ReconcileReport:
    """Issue what is missing, renew what expires soon or changed, revoke what left the inventory
    (cessationOfOperation) or is marked revoked, and keep both CRLs signed before nextUpdate.

    Inside a planning stage (``iotfleet.fs.stage.staged``) every write is recorded for a later
    commit.

    Args:
        settings: where the state lives, validity periods, passphrase source.
        identities: every identity the inventory says should exist (names unique).
        now: the time to act at (default: the clock); tests use it to move time.
        issue_revoked: names of identities marked revoked that have no certificate yet, to issue
            and revoke in this run (canaries: a certificate every CRL lists); their PEMs are in
            the report's ``captured``.
        with_issuer: called with the fleet's issuer while the state is locked (to sign material
            kept outside the index, such as an expired canary).

    Raises:
        PkiInputError, PassphraseError, IndexCorruptError, CaExpiredError, ClockBehindError,
        StateError: before anything is written.
    """
    moment = utc_now(now)
    validate_settings(settings)
    specs = validate_identities(identities)
    passphrase = read_passphrase(settings)
    if StateLayout(settings.state_dir).is_fresh():
        check_new_passphrase(passphrase)  # before the state dir is even created
    with locked_layout(settings.state_dir, create=True) as layout, contextlib.ExitStack() as stop:
        state = load_state(layout)
        # Many identities without a certificate (a first enrollment): start the signing
        # workers now, so they boot while this process decrypts the CA key and plans.
        missing = sum(
            1 for s in specs if s.revoked_reason is None and state.index.current(s.name) is None
        )
        pool = start_workers(missing, settings.workers)
        if pool is not None:
            stop.enter_context(pool)
        refuse_future_dated(state, moment)  # a clock behind what was signed: sign nothing
        index = state.index
        warnings: list[str] = []
        root_key: PrivateKey | None = None
        if state.ca is None:
            new_ca = create_ca(settings, moment)
            ca = new_ca.certs
            issuer = issuer_from(new_ca.intermediate_key, ca.intermediate)
            root_key = new_ca.root_key
        else:
            new_ca = None
            ca = state.ca
            check_ca_valid(ca, moment)
            issuer = load_issuer(layout, ca, passphrase)

        new_intermediate: x509.Certificate | None = None
        if new_ca is None and within(
            ca.intermediate.not_valid_after_utc, moment, settings.intermediate_renew_before_days
        ):
            if ca.root_key_online:
                root_key = load_root_key(layout, passphrase, "renewing the intermediate")
                new_intermediate = recertify_intermediate(ca, root_key, settings, moment)
                ca = CaCerts(ca.root, new_intermediate, True)
                issuer = issuer_from(issuer.key, new_intermediate)
            else:
                warnings.append(
                    f"the intermediate expires on {ca.intermediate.not_valid_after_utc:%Y-%m-%d}: "
                    "put ca/root.key back and run `iotfleet pki renew-intermediate`"
                )

        if with_issuer is not None:
            with_issuer(issuer, ca, moment)
        plan = _plan(
            settings,
            specs,
            index,
            ca.intermediate.not_valid_after_utc,
            moment,
            layout=layout,
            ledger=load_ledger(layout),
            rekeys=load_rekeys(layout),
            issue_revoked=issue_revoked,
        )
        warnings += plan.warnings

        need_root_crl = bool(new_ca or new_intermediate) or (
            ca.root_key_online
            and (
                not state.root_crl_ok
                or index.root_crl is None
                or within(index.root_crl.next_update, moment, settings.renew_before_days)
            )
        )
        if (
            not ca.root_key_online
            and index.root_crl is not None
            and within(index.root_crl.next_update, moment, settings.renew_before_days)
        ):
            warnings.append(
                f"the root CRL's nextUpdate is {index.root_crl.next_update:%Y-%m-%d}:"
                " put ca/root.key back for one run to re-sign it"
            )
        if need_root_crl and root_key is None:
            root_key = load_root_key(layout, passphrase, "signing the root CRL")
        if index.crl is not None and not state.crl_ok:
            warnings.append(
                f"{layout.crl} was missing or not the one the index recorded: re-signed it"
            )
        need_crl = bool(
            new_ca
            or plan.revocations
            or plan.retirements
            or plan.issue_revoked
            or not state.crl_ok
            or index.crl is None
            or within(index.crl.next_update, moment, settings.crl_refresh_before_days)
        )

        if not (
            new_ca
            or new_intermediate
            or plan.jobs
            or need_root_crl
            or need_crl
            or state.leftovers
            or state.orphan_cert_packs
            or state.txt_missing
            or state.unsealed
        ):
            return ReconcileReport(warnings=tuple(warnings))

        # ---- nothing above wrote a byte; from here on we write ----
        pack = PackBuilder(new_pack_name(moment), plan.jobs)
        # CPU only, still no write: a failed worker leaves the state as it was.
        pems = sign_batch(plan.jobs, issuer, settings.workers, pool=pool, consume=pack.add)
        if new_ca is not None:
            write_new_ca(layout, new_ca, passphrase)
        fsio.ensure_dir(layout.packs_dir)
        issued = pack.write(layout) if plan.jobs else []
        if new_intermediate is not None:
            fsio.atomic_write(layout.intermediate_cert, pem(new_intermediate))
            fsio.atomic_write(layout.chain, chain_pem(ca))

        touched_packs = [
            index.revoke_serial(serial, reason, moment).pack for serial, reason in plan.retirements
        ]
        touched_packs += [
            index.revoke(name, reason, moment).pack for name, reason in plan.revocations
        ]
        touched_packs += [index.retire(name).pack for name in plan.retire]
        for record in issued:
            index.add(record)
        for name, reason in plan.issue_revoked:
            touched_packs.append(index.revoke(name, reason, moment).pack)
        captured = {
            job.spec.name: pair
            for job, pair in zip(plan.jobs, pems, strict=True)
            if job.spec.name in dict(plan.issue_revoked)
        }
        adopted = adopt_orphans(state.orphan_cert_packs, index, moment)
        if adopted:
            need_crl = True
            warnings.append(
                f"{adopted} certificate(s) in packs the index did not know (an "
                "interrupted run, or an older index restored) were recorded as "
                "revoked"
            )
        if need_root_crl:
            assert root_key is not None
            index.root_crl = write_crl(
                layout.root_crl,
                ca.root,
                root_key,
                [],
                index.root_crl,
                moment,
                settings.root_crl_days,
            )
        if need_crl:
            index.crl = resign_leaf_crl(
                layout, index, ca.intermediate, issuer.key, moment, settings.crl_days
            )
        save_index(layout, index)
        remove_files(dead_key_packs(layout, index, touched_packs) + state.leftovers)
        return ReconcileReport(
            issued=tuple(plan.issued),
            renewed=tuple(plan.renewed),
            renewed_same_key=tuple(plan.retire),
            retired=tuple(plan.retired),
            revoked=tuple(plan.revoked),
            revoked_reasons={n: r for n, r in plan.revocations if n in plan.revoked},
            crl_changed=need_crl,
            root_crl_changed=need_root_crl,
            ca_created=new_ca is not None,
            intermediate_renewed=new_intermediate is not None,
            files_repaired=(
                len(state.leftovers)
                + len(state.orphan_cert_packs)
                + int(state.txt_missing or state.unsealed)  # index.txt and the seal: one
            ),
            warnings=tuple(warnings),
            captured=captured,
        )


def _plan(
    settings: PkiSettings,
    specs: Sequence[IdentitySpec],
    index: Index,
    issuer_not_after: datetime,
    now: datetime,
    *,
    layout: StateLayout,
    ledger: Mapping[str, Delivery],
    rekeys: Mapping[str, Rekey],
    issue_revoked: Collection[str] = (),
) -> _Plan:
    """Decide, without writing, what to issue, renew, retire and revoke (a gateway's CSR from a
    re-key over the air is signed here: ``rekeys``)."""
    plan = _Plan()
    serials: set[int] = set()
    capped = 0
    until: dict[str, datetime] = {}  # notAfter of a new certificate, by kind
    _plan_retirements(plan, specs, index, ledger, now)
    for spec in specs:
        current = index.current(spec.name)
        if spec.revoked_reason is not None:
            # Marked revoked in the inventory: revoke what is valid, never issue again.
            if current is not None:
                plan.revocations.append((spec.name, spec.revoked_reason))
                plan.revoked.append(spec.name)
            elif spec.name in issue_revoked:
                plan.issue_revoked.append((spec.name, spec.revoked_reason))
                plan.jobs.append(
                    IssueJob(
                        spec,
                        _new_serial(index, serials),
                        now - BACKDATE,
                        min(now + timedelta(days=settings.days_for(spec.kind)), issuer_not_after),
                    )
                )
            continue
        fingerprint = spec_fingerprint(spec)
        not_after = until.get(spec.kind)
        if not_after is None:
            not_after = until[spec.kind] = min(
                now + timedelta(days=settings.days_for(spec.kind)), issuer_not_after
            )
        if current is None:
            plan.issued.append(spec.name)
        elif spec.kind == "device" and (
            csr_key := _csr_key(plan, layout, spec, current, rekeys.get(spec.name))
        ):
            # Re-key over the air: the new key stays on the board; the old certificate stays
            # valid until the gateway is seen using the new one.
            plan.renewed.append(spec.name)
            plan.retire.append(spec.name)
            plan.jobs.append(
                IssueJob(
                    spec,
                    _new_serial(index, serials),
                    now - BACKDATE,
                    not_after,
                    public_key_pem=csr_key,
                )
            )
            continue
        elif current.spec != fingerprint:
            plan.renewed.append(spec.name)
            plan.revocations.append((spec.name, "superseded"))
        elif within(current.not_after, now, settings.renew_before_days):
            if not_after - current.not_after < timedelta(days=1):
                capped += 1  # the intermediate ends first: renewing would gain nothing
                continue
            plan.renewed.append(spec.name)
            if spec.kind == "device" and settings.renew_same_key:
                # The key stays where it is (control machine and board): the new certificate
                # reaches the gateway over MQTT, and the old one stays valid until then.
                plan.retire.append(spec.name)
                key_pem, public_key_pem = same_key(layout, current)
                plan.jobs.append(
                    IssueJob(
                        spec,
                        _new_serial(index, serials),
                        now - BACKDATE,
                        not_after,
                        key_pem=key_pem,
                        public_key_pem=public_key_pem,
                    )
                )
                continue
            plan.revocations.append((spec.name, "superseded"))
        else:
            continue
        plan.jobs.append(IssueJob(spec, _new_serial(index, serials), now - BACKDATE, not_after))
    wanted = {spec.name for spec in specs}
    removed = [name for name in index.current_names() if name not in wanted]
    plan.revocations += [(name, "cessationOfOperation") for name in removed]
    plan.revoked += removed
    if capped:
        plan.warnings.append(
            f"{capped} certificate(s) are due for renewal but cannot outlive the "
            "intermediate: renew the intermediate first"
        )
    return plan


def _plan_retirements(
    plan: _Plan,
    specs: Sequence[IdentitySpec],
    index: Index,
    ledger: Mapping[str, Delivery],
    now: datetime,
) -> None:
    """Revoke retiring certificates that are no longer needed: the device was seen using a
    newer one, the old one expired, or the device left the inventory or was revoked there."""
    reasons = {spec.name: spec.revoked_reason for spec in specs}
    for record in index.retiring():
        if record.name not in reasons:
            reason: str | None = "cessationOfOperation"
        elif reasons[record.name] is not None:
            reason = reasons[record.name]
        elif record.not_after <= now:
            reason = "superseded"  # expired: it leaves the CRL at once, but the state is clear
        else:
            reason = None
            seen = ledger.get(record.name, Delivery()).in_use
            seen_at = index.position_of(seen) if seen is not None else None
            own_at = index.position_of(record.serial)
            if (
                seen_at is not None
                and own_at is not None
                and seen_at > own_at
                and index.records[seen_at].name == record.name
            ):
                reason = "superseded"
        if reason is not None:
            plan.retirements.append((record.serial, reason))
            plan.retired.append(record.name)


def _csr_key(
    plan: _Plan, layout: StateLayout, spec: IdentitySpec, current: IndexRecord, rekey: Rekey | None
) -> bytes | None:
    key, warning = rekey_key_for(layout, spec, current, rekey)
    if warning is not None:
        plan.warnings.append(warning)
    return key


def _new_serial(index: Index, taken: set[int]) -> int:
    while True:
        serial = x509.random_serial_number()
        if serial not in taken and not index.has_serial(serial):
            taken.add(serial)
            return serial
