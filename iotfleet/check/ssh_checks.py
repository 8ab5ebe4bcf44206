"""Judge a broker's sshd against ``ssh_hardening_*``: its effective configuration (``sshd -T``)
and what it offers a stranger who tries to log in with a password (from outside)."""

from __future__ import annotations

import secrets
import socket

from iotfleet.model import SshHardeningSettings

# sshd -T prints prohibit-password under its old name.
_ROOT_LOGIN = {"prohibit-password": "without-password", "no": "no"}
# Offered authentication methods that let someone in without a key.
_WEAK_METHODS = ("password", "keyboard-interactive")


def expected_sshd(settings: SshHardeningSettings) -> dict[str, str]:
    """``{sshd -T keyword: value}`` the hardening asks for."""
    return {
        "authenticationmethods": "publickey",
        "pubkeyauthentication": "yes",
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitemptypasswords": "no",
        "permitrootlogin": _ROOT_LOGIN[settings.permit_root_login],
        "maxauthtries": str(settings.max_auth_tries),
        "logingracetime": str(settings.login_grace_time),
        "maxstartups": settings.max_startups,
        "disableforwarding": "yes",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "allowstreamlocalforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
        "gatewayports": "no",
        "permituserenvironment": "no",
        "kexalgorithms": ",".join(settings.kex_algorithms),
        "ciphers": ",".join(settings.ciphers),
        "macs": ",".join(settings.macs),
    }


def parse_sshd_t(output: str) -> dict[str, str]:
    """``sshd -T`` lines (``keyword value``) -> {keyword: value}; the first one wins."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values.setdefault(key.lower(), value.strip())
    return values


def sshd_problems(
    host: str,
    settings: SshHardeningSettings,
    effective: dict[str, str],
    offered: list[str] | None,
) -> list[str]:
    """What the running sshd allows beyond the hardening; ``offered``: the authentication
    methods it offered a password login from outside (None if that probe could not run)."""
    if not effective:
        return [f"sshd -T printed nothing on {host}: the SSH configuration cannot be read"]
    problems = []
    for key, want in expected_sshd(settings).items():
        got = effective.get(key)
        if got != want:
            problems.append(f"sshd on {host} has {key} {got or '(not set)'}, expected {want}")
    weak = [m for m in offered or [] if m in _WEAK_METHODS]
    if weak:
        problems.append(
            f"sshd on {host} offers {' and '.join(weak)} logins to anyone who connects "
            f"(offered: {', '.join(offered or [])}): passwords can be guessed"
        )
    return problems


def offered_auth_methods(hostname: str, port: int, user: str, timeout: float = 10) -> list[str]:
    """Try a password login with a random password; the methods the server says it accepts.

    The server answers before judging a method it does not offer; only a random password
    is ever sent, and only when the server offers passwords (then this is the finding).
    """
    import paramiko

    sock = socket.create_connection((hostname, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        try:
            transport.auth_password(user, secrets.token_urlsafe(24))
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        except paramiko.AuthenticationException:
            return ["password"]
        return ["none"]  # logged in without credentials
    finally:
        transport.close()
