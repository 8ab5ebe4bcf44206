"""Over-the-air delivery of renewed device certificates and re-keys, as steps of the rollout.

Each step is one operation pyinfra lists (``python.call`` on the control machine), added on one
host only (the first broker of the fleet, after that broker tier has rendered the ACL that lets
iotfleet's delivery identity write the certificate topics). Loading the deploy file only
decides whether there is work; publishing happens when pyinfra executes the operation.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import python

from iotfleet.fleet.cert_delivery import deliver_certificates, pending_deliveries
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.rekey_delivery import due_rekeys, run_rekeys


def _deliver(ctx: FleetContext, devices: list[str]) -> None:
    results = deliver_certificates(ctx, devices)
    failed = [r for r in results if not r.delivered]
    for r in results:
        state = "in use" if r.switched else ("delivered" if r.delivered else "NOT delivered")
        print(f"iotfleet: certificate {r.serial[:12]} of {r.device}: {state}")
    if failed:
        raise RuntimeError(
            "certificates not delivered: "
            + "; ".join(f"{r.device} ({', '.join(r.failures)})" for r in failed)
        )


def _rekey(ctx: FleetContext, devices: list[str]) -> None:
    for r in run_rekeys(ctx, devices):
        if r.refused is not None:
            print(f"iotfleet: WARNING re-key of {r.device} refused, nothing signed: {r.refused}")
            continue
        state = {"waiting": "asked, no CSR yet (gateway offline?)", "received": "CSR received"}
        line = state.get(r.csr, f"new certificate {(r.serial or '')[:12]}")
        if r.csr == "signed":
            line += ", in use" if r.switched else ", delivered, not in use yet"
        print(f"iotfleet: re-key of {r.device} ({r.reason}): {line}")
        for failure in r.failures:
            print(f"iotfleet: WARNING re-key of {r.device}: {failure}")


def rekey_devices(ctx: FleetContext) -> None:
    """Ask the gateways due for a new key, sign the CSRs they sent, deliver the certificates."""
    if not ctx.fleet.brokers or host.name != ctx.fleet.brokers[0].name:
        return
    due = sorted(due_rekeys(ctx))
    if not due:
        host.noop("no device to re-key")
        return
    python.call(
        name=f"Re-key {len(due)} device(s) over MQTT",
        function=_rekey,
        ctx=ctx,
        devices=due,
    )


def deliver_renewed_certificates(ctx: FleetContext) -> None:
    """Publish the certificates renewed on the same key that no gateway was sent yet."""
    if not ctx.fleet.brokers or host.name != ctx.fleet.brokers[0].name:
        return
    pending = pending_deliveries(ctx)
    if not pending:
        host.noop("no renewed device certificate to deliver")
        return
    python.call(
        name=f"Deliver {len(pending)} renewed device certificate(s) over MQTT",
        function=_deliver,
        ctx=ctx,
        devices=pending,
    )
