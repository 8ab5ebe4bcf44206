"""Judge the broker's effective mosquitto.conf per listener: anonymous access, authentication,
TLS, CRL, ACL file, iotfleet's plugin, and the global limits."""

from __future__ import annotations

from iotfleet.model import Broker, Fleet, Listener
from iotfleet.mosquitto import layout
from iotfleet.mosquitto.auth_plugin import plugin_options
from iotfleet.mosquitto.conf import ConfiguredListener, MosquittoConfig


def _configured(
    host: str, listener: Listener, config: MosquittoConfig
) -> tuple[ConfiguredListener | None, list[str]]:
    configured = config.listener(listener.port)
    if configured is None:
        return None, [f"the configuration on {host} has no listener on port {listener.port}"]
    return configured, []


def anonymous_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    if (config.effective(configured, "allow_anonymous") or "").lower() != "false":
        problems.append(
            f"anonymous clients are allowed on {host}:{listener.port} (allow_anonymous true)"
        )
    return problems


def authentication_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    """Client certificates and/or passwords are required as the inventory says."""
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    where = f"{host}:{listener.port}"
    if listener.requires_certificate:
        if (config.effective(configured, "require_certificate") or "").lower() != "true":
            problems.append(
                f"client certificates are not required on {where} (require_certificate is not "
                "true): clients without a certificate can connect"
            )
        if not (configured.options.get("cafile") or configured.options.get("capath")):
            problems.append(f"no CA to verify client certificates on {where} (cafile)")
        if listener.auth == "certificate" and (
            (configured.options.get("use_identity_as_username") or "").lower() != "true"
            and (configured.options.get("use_subject_as_username") or "").lower() != "true"
        ):
            problems.append(
                f"the certificate is not the identity on {where} (use_identity_as_username is "
                "not true): a client may claim any username"
            )
    if listener.requires_password:
        password_file = config.effective(configured, "password_file")
        wanted = layout.password_file(listener.port)
        if password_file != wanted:
            problems.append(
                f"passwords are not checked on {where} (password_file is "
                f"{password_file or 'not set'}, expected {wanted})"
            )
    if listener.tls and not configured.tls:
        problems.append(f"no TLS on {where} (no certfile), the inventory asks for TLS")
    return problems


def tls_config_problems(
    host: str, broker: Broker, listener: Listener, config: MosquittoConfig
) -> list[str]:
    """TLS versions and cipher lists are the inventory's (strong ones)."""
    configured, problems = _configured(host, listener, config)
    if configured is None or not listener.tls:
        return problems
    where = f"{host}:{listener.port}"
    settings = broker.mosquitto
    version = configured.options.get("tls_version")
    if version != settings.tls_version:
        problems.append(
            f"TLS versions on {where}: tls_version is {version or 'not set (all versions)'}, "
            f"expected {settings.tls_version}"
        )
    for option, wanted in (
        ("ciphers", settings.ciphers),
        ("ciphers_tls1.3", settings.ciphers_tls13),
    ):
        got = configured.options.get(option)
        if got != wanted:
            extra = [c for c in (got or "").split(":") if c and c not in wanted.split(":")]
            detail = f"adds {', '.join(extra)}" if extra else f"is {got or 'not set (defaults)'}"
            problems.append(f"{option} on {where} {detail}; expected the inventory's list")
    return problems


def crl_config_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    configured, problems = _configured(host, listener, config)
    if configured is None or not listener.requires_certificate:
        return problems
    crl = configured.options.get("crlfile")
    if crl != layout.CRL:
        problems.append(
            f"no CRL on {host}:{listener.port} (crlfile is {crl or 'not set'}, expected "
            f"{layout.CRL}): revoked certificates are accepted"
        )
    return problems


def acl_config_problems(host: str, listener: Listener, config: MosquittoConfig) -> list[str]:
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    acl = config.effective(configured, "acl_file")
    if acl != layout.ACL_FILE:
        problems.append(
            f"no ACL on {host}:{listener.port} (acl_file is {acl or 'not set'}, expected "
            f"{layout.ACL_FILE}): every client may read and write every topic"
        )
    return problems


def plugin_problems(
    host: str, fleet: Fleet, broker: Broker, listener: Listener, config: MosquittoConfig
) -> list[str]:
    """iotfleet's plugin is loaded on the listener with the options its auth needs."""
    configured, problems = _configured(host, listener, config)
    if configured is None:
        return problems
    where = f"{host}:{listener.port}"
    plugin = config.effective(configured, "plugin")
    if plugin != layout.AUTH_PLUGIN:
        return [
            f"iotfleet's plugin is not loaded on {where} (plugin is {plugin or 'not set'}, "
            f"expected {layout.AUTH_PLUGIN}): "
            + (
                "any fleet certificate logs in with another identity's password; "
                if listener.auth == "certificate+password"
                else ""
            )
            + "devices may keep unlimited retained messages, the health identity may log in "
            "from the network"
        ]
    expected = dict(
        plugin_options(
            fleet,
            broker,
            listener,
            layout.password_file(listener.port) if listener.requires_password else None,
            layout.IDENTITIES_FILE,
        )
    )
    for key in ("password_file", "require_cn", "local_only", "identities_file"):
        want = expected.get(key)
        got = configured.options.get(f"plugin_opt_{key}")
        if got != want:
            problems.append(
                f"iotfleet's plugin on {where}: plugin_opt_{key} is {got or 'not set'}, "
                f"expected {want or 'not set'}"
            )
    return problems


def limit_problems(host: str, broker: Broker, config: MosquittoConfig) -> list[str]:
    """Packet size, in-flight and queued messages are bounded as the inventory says."""
    settings = broker.mosquitto
    wanted = {
        "max_packet_size": settings.max_packet_size,
        "memory_limit": settings.heap_limit,
        "max_inflight_messages": settings.max_inflight_messages,
        "max_queued_messages": settings.max_queued_messages,
        "max_queued_bytes": settings.max_queued_bytes,
    }
    why = {
        "max_packet_size": ": a CONNECT announcing 256 MiB is buffered before authentication",
        "memory_limit": ": the broker allocates until the kernel kills it",
    }
    problems = []
    for option, want in wanted.items():
        got = config.global_options.get(option)
        if got != str(want):
            problems.append(
                f"{option} on {host} is {got or 'not set (unlimited)'}, expected {want}"
                + why.get(option, "")
            )
    return problems
