"""The outside checks (MQTT probes, sslyze) and the PKI checks against a real local Mosquitto
running the configuration the mosquitto role renders, hardened and then weakened.

Fast feedback without a lab; tests/integration/test_compliance.py shows the same checks
failing on real, sandboxed lab brokers through ``iotfleet check``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotfleet.check.identities import REFUSED_KINDS, choose_cast, listener_user
from iotfleet.check.mqtt_checks import BrokerProber
from iotfleet.check.pki_checks import (
    chain_problems,
    crl_problems,
    crl_update_problems,
    expiry_problems,
    issued_certificate_problems,
    key_problems,
)
from iotfleet.check.plan import BrokerTarget, ListenerTarget, plan_for
from iotfleet.check.tls_scan import (
    TlsScan,
    certificate_problems,
    cipher_problems,
    protocol_problems,
    scan_listeners,
    weaknesses,
)
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import reconcile_fleet
from iotfleet.model import RawHost, build_fleet
from iotfleet.model.own_identities import PROBE_DEVICE, PROBE_PEER
from iotfleet.mosquitto import layout
from iotfleet.pki.testing import make_foreign_ca_identity
from iotfleet.roles.mosquitto.render import BrokerConfig, service_files
from iotfleet.roles.pki import broker_pki_files
from tests.support.local_broker import free_port, running_mosquitto
from tests.support.mosquitto_edits import allow_tls_1_1

PASSPHRASE = "unit-test-passphrase-0123"
CERT, PASSWORD, BOTH = 0, 1, 2


@dataclass
class Local:
    """A fleet of one broker (localhost) whose files live in ``files``."""

    ctx: FleetContext
    target: BrokerTarget
    ports: list[int]
    files: dict[str, Path]  # live path on a broker -> local copy
    config: BrokerConfig

    def listener(self, index: int) -> ListenerTarget:
        return self.target.listeners[index]

    def prober(self) -> BrokerProber:
        cast = choose_cast(self.ctx.fleet, self.ctx.pki, set(self.ctx.passwords))
        return BrokerProber(self.ctx, self.target, cast, timeout=3)

    @contextmanager
    def running(
        self,
        workdir: Path,
        change: Callable[[int, str], str] | None = None,
        head_change: Callable[[str], str] | None = None,
    ) -> Iterator[None]:
        """Mosquitto with the rendered configuration, each listener block passed through
        ``change(port, block)`` and the global settings through ``head_change(head)`` first."""
        text = self.config.text({live: str(local) for live, local in self.files.items()})
        head, *blocks = text.split("\nlistener ")
        if change is not None:
            blocks = [change(int(b.split()[0]), b) for b in blocks]
        if head_change is not None:
            head = head_change(head)
        text = "\nlistener ".join([head, *blocks])
        with running_mosquitto(text, workdir, self.ports):
            yield


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    mp = pytest.MonkeyPatch()
    mp.setenv("IOTFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    mp.setenv("IOTFLEET_PKI_PASSPHRASE", PASSPHRASE)
    ports = [free_port() for _ in range(3)]
    data = {
        "fleet_name": "unit",
        "ssh_hostname": "127.0.0.1",
        "mosquitto_listeners": [
            {"port": ports[0]},
            {"port": ports[1], "auth": "password"},
            {"port": ports[2], "auth": "certificate+password"},
        ],
        "fleet_devices": [{"id": "gw-1"}, {"id": "gw-2"}],
        "fleet_clients": [
            {"name": "ops", "roles": ["admin"]},
            {"name": "board", "roles": ["dashboard"], "auth": "password", "password": "generated"},
            {
                "name": "desk",
                "roles": ["operator"],
                "auth": "certificate+password",
                "password": "generated",
            },
        ],
    }
    fleet = build_fleet([RawHost("localhost", ("brokers",), data)])
    ctx = FleetContext.for_fleet(fleet)
    reconcile_fleet(fleet, ctx.pki_settings, ctx.state_dir)
    broker = fleet.brokers[0]
    config, managed = service_files(ctx, broker)
    files_dir = tmp_path_factory.mktemp("files")
    files: dict[str, Path] = {}
    for item in [*broker_pki_files(ctx.pki, broker.name), *managed]:
        path = files_dir / item.staged_name
        path.write_bytes(item.content)
        files[item.path] = path
    plan = plan_for(fleet, {"localhost": data})
    yield Local(ctx, plan.brokers[0], ports, files, config)
    mp.undo()


def _every_outside_problem(local: Local) -> list[str]:
    prober = local.prober()
    problems: list[str] = []
    for target in local.target.listeners:
        settings = target.listener
        problems += prober.anonymous(target)
        if settings.requires_certificate:
            problems += prober.no_certificate(target)
            for kind in REFUSED_KINDS:
                problems += prober.untrusted_certificate(target, kind)
        if settings.requires_password:
            problems += prober.wildcard_username(target)
            problems += prober.empty_password(target)
            problems += prober.wrong_password(target)
        if settings.auth == "certificate":
            problems += prober.own_topic(target)
        user = listener_user(prober.cast, settings)
        assert user is not None
        problems += prober.publish_only_granted(target, user)
        problems += prober.read_only_granted(target, user)
    return problems


def test_the_cast_is_chosen_from_the_inventory(local: Local) -> None:
    """iotfleet's own probe identities: no real device is disconnected by a check."""
    cast = local.prober().cast
    assert (cast.device, cast.peer) == (PROBE_DEVICE, PROBE_PEER)
    assert (cast.password_user, cast.two_factor_user) == (PROBE_DEVICE, PROBE_DEVICE)
    picked = choose_cast(local.ctx.fleet, local.ctx.pki, set(local.ctx.passwords), "gw-1")
    assert (picked.device, picked.peer) == ("gw-1", "gw-2")


def test_a_hardened_broker_passes_every_outside_check(local: Local, tmp_path: Path) -> None:
    with local.running(tmp_path):
        assert _every_outside_problem(local) == []
        scans = scan_listeners(local.target.listeners, local.ctx.pki.ca_chain_pem())
        for target in local.target.listeners:
            scan = scans[target.port]
            assert protocol_problems(scan, "tlsv1.2") == []
            assert cipher_problems(scan) == []
            assert certificate_problems(scan, local.target.client_names) == []
            assert set(scan.accepted) == {"TLS 1.2", "TLS 1.3"}


def test_a_broker_that_lets_anyone_in_is_named(local: Local, tmp_path: Path) -> None:
    password = local.listener(PASSWORD)

    def open_door(port: int, block: str) -> str:
        if port != password.port:
            return block
        opened = (
            block.replace("allow_anonymous false", "allow_anonymous true")
            .replace("use_username_as_clientid true\n", "")
            .replace(f"password_file {local.files[layout.password_file(port)]}\n", "")
            .replace(f"acl_file {local.files[layout.ACL_FILE]}\n", "")
        )
        # iotfleet's plugin would still refuse anonymous clients: drop it too.
        lines = opened.splitlines(keepends=True)
        return "".join(line for line in lines if not line.startswith("plugin"))

    with local.running(tmp_path, open_door):
        prober = local.prober()
        where = password.id
        assert prober.anonymous(password) == [f"anonymous client accepted on {where}"]
        assert prober.wildcard_username(password) == [
            f"username '#' with an empty password accepted on {where}",
            f"username '+' with an empty password accepted on {where}",
            f"username '' with an empty password accepted on {where}",
        ]
        assert prober.empty_password(password) == [
            f"probe device {PROBE_DEVICE} with an empty password accepted on {where}"
        ]
        assert prober.wrong_password(password) == [
            f"probe device {PROBE_DEVICE} with a wrong password accepted on {where}"
        ]
        # Without an ACL the dashboard may write devices' commands and read $SYS.
        published = prober.publish_only_granted(password, "board")
        assert (
            f"client board can publish to devices/{PROBE_PEER}/telemetry/iotfleet-compliance on "
            f"{where}"
        ) in " ".join(published)
        read = prober.read_only_granted(password, "board")
        assert any(p.startswith("client board can read $SYS/") for p in read), read


def test_optional_certificates_let_foreign_revoked_and_expired_ones_in(
    local: Local, tmp_path: Path
) -> None:
    both = local.listener(BOTH)

    def optional(port: int, block: str) -> str:
        if port != both.port:
            return block
        weakened = block.replace("require_certificate true", "require_certificate false")
        weakened = weakened.replace(f"crlfile {local.files[layout.CRL]}\n", "")
        # iotfleet's plugin would still refuse a login without a certificate: drop it too.
        lines = weakened.splitlines(keepends=True)
        return "".join(line for line in lines if not line.startswith("plugin"))

    with local.running(tmp_path, optional):
        prober = local.prober()
        assert prober.no_certificate(both) == [
            f"client without a certificate (username {PROBE_DEVICE} and its valid password) "
            "accepted on "
            f"{both.id}"
        ]
        assert prober.untrusted_certificate(both, "foreign") == [
            f"certificate from another CA accepted on {both.id}"
        ]
        assert prober.untrusted_certificate(both, "revoked") == [
            f"revoked certificate accepted on {both.id}"
        ]
        assert prober.untrusted_certificate(both, "expired") == [
            f"expired certificate accepted on {both.id}"
        ]
        # The certificate listener next to it still refuses them all.
        cert = local.listener(CERT)
        assert [prober.untrusted_certificate(cert, k) for k in REFUSED_KINDS] == [[], [], []]


def test_a_permissive_acl_is_caught_by_what_arrives(local: Local, tmp_path: Path) -> None:
    acl = local.files[layout.ACL_FILE]
    original = acl.read_text()
    acl.write_text(original + "\nuser gw-1\ntopic readwrite #\n")
    try:
        with local.running(tmp_path):
            prober = local.prober()
            cert = local.listener(CERT)
            published = prober.publish_only_granted(cert, "gw-1")
            assert any(
                p.startswith(
                    f"device gw-1 can publish to devices/{PROBE_PEER}/telemetry/"
                    f"iotfleet-compliance on {cert.id} (PUBACK 0x"
                )
                for p in published
            ), published
            read = prober.read_only_granted(cert, "gw-1")
            assert (
                f"device gw-1 can read devices/{PROBE_PEER}/telemetry/iotfleet-compliance on "
                f"{cert.id} (subscribed to '#'); the inventory does not let it"
            ) in read
    finally:
        acl.write_text(original)


def test_sslyze_names_old_protocols_and_weak_suites(local: Local, tmp_path: Path) -> None:
    with local.running(tmp_path, allow_tls_1_1):
        cert = local.listener(CERT)
        scan = scan_listeners([cert], local.ctx.pki.ca_chain_pem())[cert.port]
    assert protocol_problems(scan, "tlsv1.2") == [
        f"TLS 1.1 accepted on {cert.id} (allowed: TLS 1.2 and TLS 1.3)"
    ]
    assert (
        f"weak cipher suite TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA accepted over TLS 1.1 on "
        f"{cert.id}: CBC"
    ) in cipher_problems(scan)


def test_cipher_suite_weaknesses_and_unreachable_listeners() -> None:
    assert weaknesses("TLS_AES_128_GCM_SHA256") == []
    assert weaknesses("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256") == []
    assert weaknesses("TLS_RSA_WITH_AES_128_GCM_SHA256") == [
        "RSA key exchange (no forward secrecy)"
    ]
    assert weaknesses("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA") == ["CBC"]
    assert weaknesses("TLS_RSA_WITH_3DES_EDE_CBC_SHA") == [
        "RSA key exchange (no forward secrecy)",
        "CBC",
        "DES/3DES",
    ]
    down = TlsScan("mqtt1:8883", error="no TLS connection to mqtt1:8883: refused")
    assert protocol_problems(down, "tlsv1.2") == [down.error]
    assert certificate_problems(down, ["mqtt1"]) == [down.error]


# -- PKI on disk -----------------------------------------------------------------------------------


def test_pki_files_are_the_fleets(local: Local) -> None:
    pki = local.ctx.pki
    name = local.target.name
    cert, key, chain, crl = (
        pki.certificate_pem(name),
        pki.private_key_pem(name),
        (pki.ca_chain_pem()),
        pki.crl_pem(),
    )
    import hashlib

    assert issued_certificate_problems(name, cert, cert) == []
    assert key_problems(name, key, hashlib.sha256(key).hexdigest()) == []
    assert chain_problems(name, chain, chain) == []
    assert crl_problems(name, crl, crl) == []
    assert crl_update_problems(name, crl, 24) == []
    issued = x509.load_pem_x509_certificate(cert)
    assert expiry_problems(name, [("broker certificate", issued)], 14) == []

    foreign = make_foreign_ca_identity("localhost", "broker", dns_names=("localhost",))
    assert issued_certificate_problems(name, cert, foreign.certificate_pem)[0].startswith(
        f"the broker certificate on {name} is not the one the fleet PKI issued"
    )
    assert key_problems(name, key, "0" * 64) == [
        f"{layout.SERVER_KEY} on {name} is not the key the fleet PKI issued for it"
    ]
    assert chain_problems(name, chain, chain + foreign.ca_chain_pem)[0].startswith(
        f"the broker on {name} trusts client certificates from CAs outside the fleet PKI"
    )
    later = issued.not_valid_after_utc - timedelta(days=3)
    assert expiry_problems(name, [("broker certificate", issued)], 14, later) == [
        f"the broker certificate on {name} expires in 3.0 days (notAfter "
        f"{issued.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; margin 14 days)"
    ]
    stale = x509.load_pem_x509_crl(crl).next_update_utc
    assert stale is not None
    expired = crl_update_problems(name, crl, 24, stale + timedelta(days=2))
    assert expired == [
        f"the CRL on {name} expired 2.0 days ago (nextUpdate {stale:%Y-%m-%d %H:%M} UTC): the "
        "broker refuses every client certificate"
    ]
    assert crl_update_problems(name, crl, 24, stale - timedelta(hours=5))[0].startswith(
        f"the CRL on {name} expires in 5.0 hours"
    )
    other_crl = make_crl_without_revocations(local)
    assert crl_problems(name, crl, other_crl)[0].startswith(
        f"the CRL on {name} is not the fleet's current CRL"
    )
    assert "revoked certificate(s) missing from it" in crl_problems(name, crl, other_crl)[0]


def make_crl_without_revocations(local: Local) -> bytes:
    from iotfleet.pki.ca import load_ca_certs
    from iotfleet.pki.crl import build_crl
    from iotfleet.pki.keys import load_encrypted_key
    from iotfleet.pki.layout import StateLayout
    from iotfleet.pki.passphrase import read_passphrase

    settings = local.ctx.pki_settings
    state = StateLayout(settings.state_dir)
    certs = load_ca_certs(state)
    assert certs is not None
    key = load_encrypted_key(state.intermediate_key, read_passphrase(settings))
    crl = build_crl(certs.intermediate, key, [], 1, datetime.now(UTC), 7)
    return crl.public_bytes(serialization.Encoding.PEM)
