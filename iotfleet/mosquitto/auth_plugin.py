"""Options of iotfleet's Mosquitto plugin (``roles/mosquitto/plugin/iotfleet_auth.c``).

The plugin is loaded on every listener (``plugin`` + ``plugin_opt_*`` lines after it; a list
option is repeated, one item a line). It enforces what Mosquitto's own files cannot:

- ``certificate+password`` listeners: the client certificate's CN must be the username;
- password listeners: it verifies the password itself, to log each refusal with username,
  address and listener, then defers to Mosquitto's own ``password_file`` check;
- the health identity logs in only from a local address;
- a retained PUBLISH is refused except on status topics: a device keeps at most one
  retained message, not one per telemetry topic;
- only the broker's identities (``identities_file``) log in or, on certificate listeners
  where no login callback runs, may do anything: the ACL's patterns give any name its device
  topics, so a device of another site with a valid certificate must get nothing here;
- on certificate-only listeners a ``certificate+password`` client may do nothing: Mosquitto
  takes the certificate as the login there without asking a plugin, so the connection itself
  cannot be refused.
"""

from __future__ import annotations

from iotfleet.device.contract import certificate_topic, csr_topic, rekey_topic
from iotfleet.model import Broker, Fleet, Listener
from iotfleet.model.own_identities import health_identity_name

# Always counted as local; the broker's own bind addresses are added (the health check
# connects to a listener's bind address when it has one).
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


def retain_topics(fleet: Fleet) -> list[str]:
    """Topic filters on which a retained PUBLISH is allowed: ``<root>/+/status`` (every device
    with the default prefix, and the probes), the status of devices with their own prefix, and
    the certificate delivery and re-key topics (retained by design, writable only by iotfleet's
    delivery identity) and the CSR topics (writable only by their device): the ACL says who."""
    custom = {f"{d.topic_prefix}/status" for d in fleet.active_devices if d.topic_prefix}
    return [
        f"{fleet.topic_root}/+/status",
        *sorted(custom),
        certificate_topic("+"),
        rekey_topic("+"),
        csr_topic("+"),
    ]


def local_addresses(broker: Broker) -> list[str]:
    """Client addresses the local-only identities may come from."""
    binds = {lst.bind_address for lst in broker.mosquitto.listeners if lst.bind_address}
    return [*LOOPBACK_ADDRESSES, *sorted(binds - set(LOOPBACK_ADDRESSES))]


def two_factor_clients(fleet: Fleet, broker: Broker) -> list[str]:
    """Clients whose identity is a certificate *and* a password on ``broker``."""
    allowed = fleet.users_of(broker.name)
    return sorted(
        c.name
        for c in fleet.active_clients
        if c.auth == "certificate+password" and c.name in allowed
    )


def plugin_options(
    fleet: Fleet,
    broker: Broker,
    listener: Listener,
    password_file: str | None,
    identities_file: str,
) -> list[tuple[str, str]]:
    """``(key, value)`` pairs for the ``plugin_opt_<key> <value>`` lines of ``listener``."""
    options = [("listener", str(listener.port)), ("identities_file", identities_file)]
    if listener.requires_password and password_file is not None:
        options.append(("password_file", password_file))
    if listener.auth == "certificate+password":
        options.append(("require_cn", "true"))
    if listener.auth == "certificate":
        # Mosquitto takes the certificate as the login here, with no callback to refuse it:
        # a two-factor client's certificate alone gets in, but may do nothing.
        options += [("no_access", name) for name in two_factor_clients(fleet, broker)]
    options.append(("local_only", health_identity_name(broker.name)))
    options += [("local_addresses", address) for address in local_addresses(broker)]
    options += [("retain_topics", topic) for topic in retain_topics(fleet)]
    return options
