"""The compliance suite as a pytest plugin (entry point ``pytest11``, as testinfra does).

Installed with iotfleet, it is loaded by every pytest run of that environment, so it only adds
the suite's options and markers; the suite itself wakes up when a run asks for it:

    pytest --pyargs iotfleet.compliance --inventory inventory/plant-a.py -n 4
    pytest tests/compliance --inventory inventory/plant-a.py       # the same, in a checkout

Then ``session.py`` (fleet loading, parametrization per broker, xdist scheduling, results) is
registered. Any other run (``pytest tests/unit``, a user's own tests) never sees its hooks,
and a run of a parent directory (``pytest tests``) skips the suite's files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MARKERS = {
    "host": "checks run inside each broker over SSH (testinfra)",
    "outside": "checks run from the control machine against each broker's listeners",
    "service": "Mosquitto package, service state, user and systemd sandbox",
    "listeners": "where the broker listens and with what configuration",
    "files": "owner and mode of keys, certificates, password file, ACL, CRL, config",
    "config": "effective Mosquitto configuration: anonymous, certificates, TLS, CRL, ACL",
    "pki": "certificates, key and CRL on disk are the PKI's, with time left",
    "firewall": "the nftables input filter is loaded and opens only what it should",
    "ssh": "sshd takes keys only and forwards nothing (with ssh_hardening_enabled)",
    "tls": "TLS versions, cipher suites, chain and names seen from outside (sslyze)",
    "mqtt": "MQTT attacks from outside: who gets in, who may publish and read what",
    "attack": "adversary checks: factor matrix, oversized CONNECT, retained flood, rate limit",
    "bridges": "multi-site bridges: each edge's TLS, identity, topics, state; the cores' ACL",
    "flood": "checks that trip a broker's per-source limits (run after its other checks)",
    "listener_kind(kind)": "which listeners a listener check runs on (internal)",
}
PACKAGE = "iotfleet.compliance"
SUITE_DIR = Path(__file__).resolve().parent
_ACTIVE_KEY = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iotfleet", "iotfleet compliance suite")
    group.addoption("--inventory", help="pyinfra inventory of the fleet to check (required)")
    group.addoption(
        "--limit",
        action="append",
        default=[],
        metavar="HOST|GROUP",
        help="check only these brokers: a host name, a group or a glob (repeatable)",
    )
    group.addoption(
        "--probe-device",
        metavar="ID",
        help="device the MQTT probes connect as (default: the first active device by id)",
    )
    group.addoption(
        "--cert-margin-days",
        type=float,
        default=None,
        help="fail when a broker certificate expires sooner (default 14)",
    )
    group.addoption(
        "--crl-margin-hours",
        type=float,
        default=None,
        help="fail when a broker's CRL reaches nextUpdate sooner (default 72)",
    )
    group.addoption("--results-json", metavar="PATH", help="write every result as JSON here")
    group.addoption("--inventory-dump", metavar="PATH", help="(internal) the loaded inventory")


def _names_the_suite(config: pytest.Config) -> bool:
    """Whether the command line names the suite: its directory, a file in it, or the package
    (``--pyargs iotfleet.compliance``)."""
    base = config.invocation_params.dir
    for arg in config.args:
        target = arg.split("::", 1)[0]
        if config.option.pyargs and (target == PACKAGE or target.startswith(f"{PACKAGE}.")):
            return True
        path = (base / target).resolve()
        if path == SUITE_DIR or SUITE_DIR in path.parents:
            return True
    return False


def asked_for(config: pytest.Config) -> bool:
    """A run against a fleet: an xdist worker of one, an inventory given, or the suite named."""
    return bool(
        # An xdist worker of a fleet run gets the controller's hosts; of any other run, nothing.
        "iotfleet_hosts" in getattr(config, "workerinput", {})
        or config.getoption("inventory")
        or config.getoption("inventory_dump")
        or _names_the_suite(config)
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.option.help or not asked_for(config):
        return
    config.addinivalue_line(
        "filterwarnings", "ignore::cryptography.utils.CryptographyDeprecationWarning"
    )
    from iotfleet.compliance import session

    config.stash[_ACTIVE_KEY] = True
    # pytest_configure is historic: the module's own pytest_configure runs on registration.
    config.pluginmanager.register(session, "iotfleet-compliance-session")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Outside a run against a fleet, the suite's files are not collected (``pytest tests``)."""
    if config.stash.get(_ACTIVE_KEY, False):
        return None
    if collection_path.resolve() == SUITE_DIR or SUITE_DIR in collection_path.resolve().parents:
        return True
    return None
