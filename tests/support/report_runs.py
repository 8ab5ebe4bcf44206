"""Runs of a two-broker fleet as ``iotfleet check`` records them, for report and metrics
tests: good, broken (a key made 0644 on the first broker), repaired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from iotfleet.check.results import CheckResult, Expiry, Identity, RunResults

B1, B2 = "mqtt1.plant.test", "mqtt2.plant.test"
KEY = "/etc/mosquitto/certs/server.key"
KEY_TITLE = "Keys, certificates, password file, ACL, CRL and config are root:mosquitto, not public"
KEY_PROBLEM = (
    f"{KEY} on {B1} is 0644 root:mosquitto, expected 0640 root:mosquitto "
    "(readable by every local user)"
)
START = datetime(2026, 11, 28, 2, 30, tzinfo=UTC)


def run(day: int, *, broken: bool = False, brokers: tuple[str, ...] = (B1, B2)) -> RunResults:
    """The run of night ``day`` (0, 1, ...)."""
    started = START + timedelta(days=day, minutes=day)
    results = []
    expiries = []
    for host in brokers:
        bad = broken and host == B1
        results += [
            CheckResult(
                host, "Anonymous clients are refused", f"{host}:8883", "passed",
                groups=("mqtt", "outside"),
                test=f"test_mqtt.py::test_anonymous_refused[{host}:8883]",
            ),
            CheckResult(
                host, KEY_TITLE, f"{host}:{KEY}", "failed" if bad else "passed",
                KEY_PROBLEM if bad else "", ("files", "host"),
                f"test_files.py::test_owner_and_mode[{host}:{KEY}]",
            ),
            CheckResult(
                host, "mosquitto.service is enabled at boot and running", host, "passed",
                groups=("host", "service"),
                test=f"test_service.py::test_service_enabled_and_running[{host}]",
            ),
            CheckResult(
                host, "Wrong passwords are refused", host, "not applicable",
                f"{host} has no reachable listener that checks passwords", ("mqtt",),
                f"test_mqtt.py::test_wrong_password_refused[{host}]",
            ),
        ]  # fmt: skip
        # The broker certificate of mqtt2 was issued later: its days left differ.
        not_after = START + timedelta(days=90 if host == B1 else 120)
        expiries += [
            Expiry(host, "certificate", "broker certificate", not_after),
            Expiry(host, "ca", "CA 'CN=plant intermediate'", START + timedelta(days=1800)),
            Expiry(host, "crl", "CRL", started + timedelta(days=6, hours=12)),
        ]
    return RunResults(
        inventory="inventory/plant.py",
        results=results,
        facts={h: {"mosquitto_version": "2.0.11-1.2+deb12u2"} for h in brokers},
        duration=9.5 + day,
        fleet="plant",
        started=started,
        expiries=expiries,
        iotfleet_version="0.1.0",
        selection={"markexpr": None, "keyword": None, "limit": []},
        margins={"cert_days": 14, "crl_hours": 24},
        identities=[
            Identity("crl", "crl", started + timedelta(days=6, hours=12), "ok"),
            Identity("device", "sensor-007", START + timedelta(days=25), "renew"),
            Identity("broker", B1, START + timedelta(days=90), "ok"),
            Identity("intermediate-ca", "plant intermediate", START + timedelta(days=1800), "ok"),
        ],
    )


def good_broken_repaired() -> list[RunResults]:
    return [run(0), run(1, broken=True), run(2)]
