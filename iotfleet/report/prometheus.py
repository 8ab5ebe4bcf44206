"""``iotfleet check --prometheus FILE``: the run as node_exporter textfile metrics.

node_exporter's textfile collector (``--collector.textfile.directory``) serves every ``*.prom``
file of its directory; the file is replaced atomically so a scrape never reads half of it.
Metric names and the alert rules built on them: docs/compliance.md, files/prometheus/.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from iotfleet.check.results import CA, CERTIFICATE, CRL, FAILING, PASSED, RunResults
from iotfleet.fs.atomic import write_file_atomically

SUFFIX = ".prom"  # node_exporter reads only these

_HELP = {
    "iotfleet_check_passed": (
        "1 when the compliance check passed on the broker (every target), 0 when it failed; "
        "checks that did not apply are absent"
    ),
    "iotfleet_broker_checks": "checks of the last run on the broker, by outcome",
    "iotfleet_broker_compliant": "1 when every applicable check passed on the broker",
    "iotfleet_certificate_expiry_seconds": (
        "seconds from the run to the notAfter of a certificate the broker holds (negative: expired)"
    ),
    "iotfleet_certificate_not_after_timestamp_seconds": (
        "notAfter of a certificate the broker holds, as a Unix time"
    ),
    "iotfleet_crl_next_update_seconds": (
        "seconds from the run to the nextUpdate of the broker's CRL (negative: past; the "
        "broker refuses every client certificate)"
    ),
    "iotfleet_crl_next_update_timestamp_seconds": "nextUpdate of the broker's CRL, as a Unix time",
    "iotfleet_identity_expiry_seconds": (
        "seconds from the run to the notAfter (CRLs: nextUpdate) of a certificate of the "
        "fleet PKI: devices, clients, brokers, CAs"
    ),
    "iotfleet_identity_not_after_timestamp_seconds": (
        "notAfter (CRLs: nextUpdate) of a certificate of the fleet PKI, as a Unix time"
    ),
    "iotfleet_check_last_run_timestamp_seconds": "when the last compliance run started",
    "iotfleet_check_last_run_duration_seconds": "how long the last compliance run took",
    "iotfleet_check_last_run_success": "1 when every applicable check of the last run passed",
}


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels.items())
    number = f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"
    return f"{name}{{{inner}}} {number}"


def textfile(run: RunResults) -> str:
    """The metrics of ``run`` in the Prometheus text exposition format."""
    fleet = {"fleet": run.fleet}
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: dict[str, str], value: float) -> None:
        samples[name].append(_sample(name, {**fleet, **labels}, value))

    for host in run.hosts():
        mine = run.host_results(host)
        by_check: dict[str, tuple[str, bool]] = {}
        for result in mine:
            if result.outcome in FAILING or result.outcome == PASSED:
                ok = by_check.get(result.function, (result.check, True))[1]
                by_check[result.function] = (result.check, ok and result.outcome == PASSED)
        for function, (title, ok) in sorted(by_check.items()):
            add("iotfleet_check_passed", {"broker": host, "check": function, "title": title}, ok)
        for outcome, count in run.counts(host).items():
            add("iotfleet_broker_checks", {"broker": host, "outcome": outcome}, count)
        add(
            "iotfleet_broker_compliant",
            {"broker": host},
            not any(r.outcome in FAILING for r in mine),
        )
    for expiry in sorted(run.expiries, key=lambda e: (e.host, e.kind, e.name)):
        if expiry.kind in (CERTIFICATE, CA):
            labels = {"broker": expiry.host, "kind": expiry.kind, "certificate": expiry.name}
            add("iotfleet_certificate_expiry_seconds", labels, expiry.seconds_left(run.started))
            add("iotfleet_certificate_not_after_timestamp_seconds", labels, expiry.at.timestamp())
        elif expiry.kind == CRL:
            labels = {"broker": expiry.host}
            add("iotfleet_crl_next_update_seconds", labels, expiry.seconds_left(run.started))
            add("iotfleet_crl_next_update_timestamp_seconds", labels, expiry.at.timestamp())
    for identity in run.identities:
        labels = {"kind": identity.kind, "identity": identity.name}
        add("iotfleet_identity_expiry_seconds", labels, identity.seconds_left(run.started))
        add("iotfleet_identity_not_after_timestamp_seconds", labels, identity.at.timestamp())
    add("iotfleet_check_last_run_timestamp_seconds", {}, run.started.timestamp())
    add("iotfleet_check_last_run_duration_seconds", {}, round(run.duration, 3))
    add("iotfleet_check_last_run_success", {}, bool(run.results) and not run.failed)
    return "".join(_family(name, lines) for name, lines in samples.items() if lines)


def _family(name: str, lines: Iterable[str]) -> str:
    return f"# HELP {name} {_HELP[name]}\n# TYPE {name} gauge\n" + "".join(
        f"{line}\n" for line in lines
    )


def write_textfile(path: Path, run: RunResults) -> None:
    """Replace ``path`` atomically (node_exporter may be reading the directory right now);
    world-readable: node_exporter runs as its own user."""
    write_file_atomically(path, textfile(run).encode(), mode=0o644)
