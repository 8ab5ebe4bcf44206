"""The fleet of the running ``pyinfra`` command: validated, planned, then committed.

pyinfra executes deploy files once per host; the fleet is validated and its plan computed on
the first call and reused, so every host sees the same fleet and a bad inventory stops the run
before any operation. Loading writes nothing on the control machine: secrets the fleet lacks
are generated in memory and the PKI reconcile (issue, renew, revoke, re-sign the CRL) is
recorded into a stage that brokers' files and gateways' images are rendered from. The first
operation of the run commits that stage (``commit_fleet_plan``), so ``--dry``, a declined
prompt or a run that fails before it leave the state directory byte-identical, and pyinfra's
own output lists what the commit does.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

from pyinfra import host
from pyinfra import inventory as current_inventory
from pyinfra.operations import python

from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.credentials import rendering_secrets
from iotfleet.fleet.inventory import raw_hosts
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.fleet.secrets import SecretError
from iotfleet.fs.errors import PlanConflictError, WriteError
from iotfleet.fs.stage import Stage, staged
from iotfleet.model import Fleet, InventoryError, build_fleet
from iotfleet.mosquitto.acl import pattern_conflicts
from iotfleet.pki import PkiError, ReconcileReport
from iotfleet.roles.host_state import local_only
from iotfleet.roles.refusal import RolloutRefusedError

# Planned changes of a kind are listed by name up to this many (beyond, counted).
NAMES_IN_SUMMARY = 5


@dataclass(frozen=True)
class FleetPlan:
    """The validated fleet with everything this run would write, not written yet."""

    ctx: FleetContext
    report: ReconcileReport
    stage: Stage

    def __repr__(self) -> str:  # pyinfra -vvv prints operation arguments: show no content
        return f"FleetPlan(fleet={self.ctx.fleet.name!r})"

    def summary(self) -> str:
        """What the commit does, e.g. ``issue 3, renew gw-0007, re-sign CRL; 2 new secrets``."""
        pki = self.report.summary(planned=True, names_up_to=NAMES_IN_SUMMARY)
        secrets_dir = self.ctx.secrets.directory
        new_secrets = [p for p in self.stage.changed_paths() if p.is_relative_to(secrets_dir)]
        if not new_secrets:
            return pki
        secrets = f"generate {len(new_secrets)} secret(s)"
        return secrets if pki == "no change" else f"{pki}; {secrets}"


@cache
def fleet_model() -> Fleet:
    """The validated fleet of this pyinfra run, nothing resolved (exits listing problems)."""
    try:
        fleet = build_fleet(raw_hosts(current_inventory))
    except InventoryError as exc:
        raise RolloutRefusedError(f"iotfleet: {exc}") from None
    conflicts = pattern_conflicts(fleet)
    if conflicts:
        listed = "".join(f"\n  - {line}" for line in conflicts)
        raise RolloutRefusedError(
            f"iotfleet: invalid inventory ({len(conflicts)} problem(s)):{listed}"
        )
    return fleet


@cache
def fleet_context() -> FleetContext:
    """The validated fleet of this pyinfra run, read-only: no PKI plan, no new secret (tiers
    that only push what the PKI holds, such as ``deploy/crl.py``)."""
    try:
        return FleetContext.for_fleet(fleet_model(), read_only=True)
    except (InventoryError, SecretError) as exc:
        raise RolloutRefusedError(f"iotfleet: {exc}") from None


# pyinfra loads the deploy files of its hosts in greenlets: a plan that yields (the plugin
# build's subprocess does) must not be computed twice by two hosts at once.
_plan_lock = threading.Lock()


_plan_refused: list[RolloutRefusedError] = []


def fleet_plan() -> FleetPlan:
    """The fleet and its PKI plan (computed once per pyinfra run; exits listing problems)."""
    with _plan_lock:
        if _plan_refused:  # every host of the run gets the one refusal, not a plan of its own
            raise _plan_refused[0]
        try:
            return _fleet_plan()
        except RolloutRefusedError as exc:
            _plan_refused.append(exc)
            raise


@cache
def _fleet_plan() -> FleetPlan:
    stage = Stage()
    try:
        fleet = fleet_model()
        if fleet.brokers:
            # gcc compiles the brokers' plugin on another core while this run plans its PKI.
            from iotfleet.roles.mosquitto.plugin_build import start_auth_plugin_build

            start_auth_plugin_build()
        ctx = FleetContext.for_fleet(fleet, stage=stage)
        with staged(stage):
            report = reconcile_fleet(ctx.fleet, ctx.pki_settings, ctx.state_dir)
        # Secrets the hosts' rendering uses are generated now, so that the plan (and the
        # commit operation pyinfra lists) holds them, even when the PKI has nothing to do.
        rendering_secrets(ctx)
    except (InventoryError, SecretError, WriteError) as exc:
        raise RolloutRefusedError(f"iotfleet: {exc}") from None
    except PkiError as exc:
        raise RolloutRefusedError(f"iotfleet: PKI: {exc}") from None
    plan = FleetPlan(ctx, report, stage)
    print(f"iotfleet: PKI of fleet {fleet.name} (plan): {plan.summary()}", file=sys.stderr)
    for warning in report.warnings:
        print(f"iotfleet: PKI warning: {warning}", file=sys.stderr)
    return plan


_commit_lock = threading.Lock()
_hosts_with_commit: set[str] = set()
# Hosts whose first operation commits the plan (the others got a no-op: nothing to commit).
_hosts_committing: set[str] = set()


@local_only
def _commit(plan: FleetPlan) -> None:
    # Every host runs this first operation; the first one commits, the others find it done.
    with _commit_lock:
        try:
            plan.stage.commit()
        except (PkiError, PlanConflictError, WriteError) as exc:
            raise RuntimeError(f"PKI of fleet {plan.ctx.fleet.name}: {exc}") from None


def reconciled_fleet() -> FleetContext:
    """The fleet, with the operation that commits its plan added for the current host.

    Call it from every deploy file that renders from the PKI or secrets: the commit operation
    is added once per host, before the caller's operations.
    """
    plan = fleet_plan()
    if host.name not in _hosts_with_commit:
        _hosts_with_commit.add(host.name)
        name = f"PKI of fleet {plan.ctx.fleet.name}: {plan.summary()}"
        if plan.stage.empty:
            host.noop(name)
            recheck_before_operations(plan)
        else:
            _hosts_committing.add(host.name)
            python.call(name=name, function=_commit, plan=plan)
    return plan.ctx


_RECHECKS = "_iotfleet_rechecks_plan"


def recheck_before_operations(plan: FleetPlan) -> None:
    """A plan with nothing to commit is checked again before the first operation runs: if
    another run changed the PKI meanwhile, the files rendered from the old state are not
    pushed (``--dry`` runs no operation, so it checks nothing).

    The commit operation does this check for a plan with changes; the pyinfra CLI has no hook
    between its prompt and the first operation but its ``run_ops``, which is wrapped once.
    """
    cli: Any = sys.modules.get("pyinfra_cli.cli")
    run_ops = getattr(cli, "run_ops", None)
    if run_ops is None or getattr(run_ops, _RECHECKS, False):
        return

    def run_ops_if_plan_current(state: Any, *args: Any, **kwargs: Any) -> None:
        fleet = plan.ctx.fleet.name
        if not plan.stage.empty and not _hosts_committing:
            # Something was staged after every host was given "no change": no operation would
            # commit it, and the next run would make it anew. Stop before writing anything.
            staged_paths = ", ".join(str(p) for p in plan.stage.changed_paths())
            raise RolloutRefusedError(
                f"iotfleet: PKI of fleet {fleet}: state was planned after the run listed "
                f"no change ({staged_paths}); nothing was written (an iotfleet defect: "
                "please report it)"
            )
        try:
            plan.stage.verify_unchanged()
        except (PkiError, PlanConflictError) as exc:
            raise RolloutRefusedError(f"iotfleet: PKI of fleet {fleet}: {exc}") from None
        run_ops(state, *args, **kwargs)

    setattr(run_ops_if_plan_current, _RECHECKS, True)
    cli.run_ops = run_ops_if_plan_current
