"""Clients for brokers under test: paho probes and Debian's mosquitto_pub/mosquitto_sub."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from iotfleet.check.mqtt_probe import Identity, Target
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.pki import load_canary
from iotfleet.pki.testing import make_foreign_ca_identity


def identity_of(ctx: FleetContext, name: str, *, password: bool = False) -> Identity:
    """A fleet identity by name: certificate and key, plus its password if asked."""
    secret = ctx.passwords[name].get_secret_value() if password else None
    return Identity(
        ctx.pki.certificate_pem(name),
        ctx.pki.private_key_pem(name),
        name if password else None,
        secret,
    )


def refused_identity(ctx: FleetContext, kind: str) -> Identity:
    """Credentials a hardened broker must refuse: ``anonymous``, ``foreign``, ``revoked``,
    ``expired``."""
    if kind == "anonymous":
        return Identity()
    if kind == "foreign":
        foreign = make_foreign_ca_identity("sensor-1")
        return Identity(foreign.certificate_pem, foreign.private_key_pem)
    canary = load_canary(ctx.state_dir, f"iotfleet-canary-{kind}")
    return Identity(canary.certificate_pem, canary.private_key_pem)


def target(ctx: FleetContext, host: str, port: int) -> Target:
    return Target(host, port, ctx.pki.ca_chain_pem())


LEGACY_TLS_OPENSSL_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1
MaxProtocol = TLSv1.1
CipherString = DEFAULT:@SECLEVEL=0
"""


@dataclass(frozen=True)
class MosquittoCli:
    """Debian's mosquitto_pub/mosquitto_sub with files written to a private directory."""

    workdir: Path
    ca_pem: bytes

    def _files(self, identity: Identity) -> list[str]:
        ca = self.workdir / "ca.pem"
        ca.write_bytes(self.ca_pem)
        args = ["--cafile", str(ca)]
        if identity.certificate_pem and identity.private_key_pem:
            cert, key = self.workdir / "client.pem", self.workdir / "client.key"
            cert.write_bytes(identity.certificate_pem)
            key.touch(mode=0o600)
            key.write_bytes(identity.private_key_pem)
            args += ["--cert", str(cert), "--key", str(key)]
        if identity.username is not None:
            args += ["-u", identity.username]
        if identity.password is not None:
            # Options file instead of -P: keeps the password out of the process list.
            options = self.workdir / "mosquitto_pub"
            options.touch(mode=0o600)
            options.write_text(f"-P {identity.password}\n")
        return args

    def _env(self, legacy_tls: bool = False) -> dict[str, str]:
        env = {"XDG_CONFIG_HOME": str(self.workdir), "PATH": "/usr/bin:/bin"}
        if legacy_tls:
            # mosquitto_pub cannot cap the TLS version (--tls-version sets a minimum), so
            # OpenSSL's own configuration makes the client offer TLS 1.0/1.1 only.
            conf = self.workdir / "openssl-legacy.cnf"
            conf.write_text(LEGACY_TLS_OPENSSL_CONF)
            env["OPENSSL_CONF"] = str(conf)
        return env

    def publish(
        self,
        host: str,
        port: int,
        identity: Identity,
        topic: str,
        *extra: str,
        legacy_tls: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        (self.workdir / "mosquitto_pub").unlink(missing_ok=True)
        args = self._files(identity)
        return subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                host,
                "-p",
                str(port),
                *args,
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                "probe",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=self._env(legacy_tls),
            check=False,
        )

    def subscribe_once(
        self, host: str, port: int, identity: Identity, topic: str, wait: int = 3
    ) -> subprocess.CompletedProcess[str]:
        """mosquitto_sub for one message, giving up after ``wait`` seconds (exit 27)."""
        (self.workdir / "mosquitto_pub").unlink(missing_ok=True)
        args = self._files(identity)
        if (self.workdir / "mosquitto_pub").exists():
            (self.workdir / "mosquitto_pub").rename(self.workdir / "mosquitto_sub")
        return subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                host,
                "-p",
                str(port),
                *args,
                "-t",
                topic,
                "-C",
                "1",
                "-W",
                str(wait),
                "-v",
            ],
            capture_output=True,
            text=True,
            timeout=wait + 30,
            env=self._env(),
            check=False,
        )
