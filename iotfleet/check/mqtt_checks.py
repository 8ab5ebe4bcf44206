"""MQTT attacks from outside against one broker's listeners; each method returns problems.

Refusals are only judged on a listener that answers (otherwise the problem says the check
could not judge), and password refusals only after the valid password was seen accepted, so
a broker that is down never passes by accident. Bad certificates must be refused by TLS
itself, not merely at CONNECT. Reads are judged by what arrives, never by SUBACKs (Mosquitto
grants subscriptions its ACL forbids and filters at delivery).

Probes publish non-retained QoS 1 messages with clean sessions that expire at once: nothing
is left on the broker. Their payload says what they are.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from iotfleet.check.identities import ProbeCast, credentials, listener_user, refused_certificate
from iotfleet.check.mqtt_probe import Identity, ProbeError, Session, Target, session, succeeded
from iotfleet.check.mqtt_probe import try_connect as _try_connect
from iotfleet.check.plan import BrokerTarget, ListenerTarget
from iotfleet.context import FleetContext
from iotfleet.mosquitto.acl import acl_rules
from iotfleet.probes import PROBE_DEVICES, probe_prefix

PROBE_LEAF = "iotfleet-compliance"
PROBE_PAYLOAD = b"iotfleet compliance probe: not a measurement, ignore"
SETTLE_SECONDS = 0.5  # after the last PUBACK, for deliveries to arrive
NOBODY = "iotfleet-compliance-nobody"  # a device id no fleet has (topics of "another device")
REFUSED_NAMES = {
    "foreign": "certificate from another CA",
    "revoked": "revoked certificate",
    "expired": "expired certificate",
}


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: ``+`` one level, ``#`` the rest; wildcards never match ``$`` topics at
    the first level."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels, parts = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(parts) or (level != "+" and level != parts[index]):
            return False
    return len(levels) == len(parts)


class Grants:
    """What the inventory lets one user do (its ACL rules for one broker)."""

    def __init__(self, rules: list[tuple[str, str]]) -> None:
        self.read = [t for a, t in rules if a in ("read", "readwrite")]
        self.write = [t for a, t in rules if a in ("write", "readwrite")]

    def can_read(self, topic: str) -> bool:
        return any(topic_matches(f, topic) for f in self.read)

    def can_write(self, topic: str) -> bool:
        return any(topic_matches(f, topic) for f in self.write)


def _concrete(topic_filter: str) -> str:
    return topic_filter.replace("+", PROBE_LEAF).replace("#", PROBE_LEAF)


class BrokerProber:
    """The outside MQTT checks of one broker."""

    def __init__(
        self, ctx: FleetContext, target: BrokerTarget, cast: ProbeCast, timeout: float = 5
    ) -> None:
        self.ctx = ctx
        self.target = target
        self.cast = cast
        self.timeout = timeout
        self._reachable: dict[int, str | None] = {}
        self._rules = acl_rules(ctx.fleet, target.name)

    # -- helpers --------------------------------------------------------------------------

    def mqtt_target(self, listener: ListenerTarget) -> Target:
        return Target(
            listener.connect_name, listener.port, self.ctx.pki.ca_chain_pem(), listener.websockets
        )

    def who(self, name: str) -> str:
        if name in PROBE_DEVICES:
            return f"probe device {name}"
        if any(d.id == name for d in self.ctx.fleet.devices):
            return f"device {name}"
        return f"client {name}"

    def grants(self, name: str) -> Grants:
        return Grants(self._rules.get(name, []))

    def prefix(self, device: str | None) -> str:
        if device is None:
            return f"{self.ctx.fleet.topic_root}/{NOBODY}"
        if device in PROBE_DEVICES:
            return probe_prefix(self.ctx.fleet.topic_root, device)
        return self.ctx.fleet.topic_prefix(self.ctx.fleet.device(device))

    def unreachable(self, listener: ListenerTarget) -> str | None:
        """Why nothing answers on the listener's port (None when it answers)."""
        if listener.port not in self._reachable:
            try:
                socket.create_connection(
                    (listener.connect_name, listener.port), timeout=self.timeout
                ).close()
                self._reachable[listener.port] = None
            except OSError as exc:
                self._reachable[listener.port] = f"{listener.id} does not answer ({exc})"
        return self._reachable[listener.port]

    def _connect(self, listener: ListenerTarget, identity: Identity):  # type: ignore[no-untyped-def]
        return _try_connect(self.mqtt_target(listener), identity, timeout=self.timeout)

    def _must_refuse(
        self, listener: ListenerTarget, identity: Identity, what: str, *, by_tls: bool = False
    ) -> list[str]:
        down = self.unreachable(listener)
        if down:
            return [f"cannot check that {what} is refused: {down}"]
        result = self._connect(listener, identity)
        if result.accepted:
            return [f"{what} accepted on {listener.id}"]
        if result.stage == "network":
            return [f"cannot check that {what} is refused on {listener.id}: {result.detail}"]
        if by_tls and result.stage == "connack":
            return [
                f"{what} passed the TLS handshake on {listener.id} (refused only at CONNECT: "
                f"{result.detail})"
            ]
        return []

    @contextmanager
    def _session(self, listener: ListenerTarget, identity: Identity) -> Iterator[Session]:
        with session(
            self.mqtt_target(listener), identity, timeout=self.timeout, reconnect=False
        ) as probe:
            yield probe

    # -- who gets in --------------------------------------------------------------------------

    def anonymous(self, listener: ListenerTarget) -> list[str]:
        return self._must_refuse(listener, Identity(), "anonymous client")

    def no_certificate(self, listener: ListenerTarget) -> list[str]:
        """No client certificate, even with a valid username and password."""
        claimed = self.cast.two_factor_user if listener.listener.requires_password else None
        claimed = claimed or self.cast.device or NOBODY
        identity = Identity(username=claimed)
        what = f"client without a certificate (username {claimed})"
        if listener.listener.requires_password and claimed in self.ctx.passwords:
            password = self.ctx.passwords[claimed].get_secret_value()
            identity = Identity(username=claimed, password=password)
            what = f"client without a certificate (username {claimed} and its valid password)"
        return self._must_refuse(listener, identity, what)

    def untrusted_certificate(self, listener: ListenerTarget, kind: str) -> list[str]:
        """A foreign, revoked or expired certificate is refused by TLS (with a valid password
        where the listener also wants one, so only the certificate can be the reason)."""
        try:
            bad = refused_certificate(self.ctx, kind)
        except FileNotFoundError:
            return [
                f"no {kind} canary certificate in {self.ctx.state_dir}: run a rollout first "
                "(deploy/pki.py makes it)"
            ]
        identity = bad
        user = self.cast.two_factor_user
        if listener.listener.requires_password and user is not None:
            password = self.ctx.passwords[user].get_secret_value()
            identity = Identity(bad.certificate_pem, bad.private_key_pem, user, password)
        return self._must_refuse(listener, identity, REFUSED_NAMES[kind], by_tls=True)

    def _valid_password_user(self, listener: ListenerTarget) -> tuple[str | None, list[str]]:
        """The listener's password user, after checking it gets in with its password."""
        user = listener_user(self.cast, listener.listener)
        if user is None:
            return None, []
        down = self.unreachable(listener)
        if down:
            return None, [f"cannot check passwords: {down}"]
        result = self._connect(listener, credentials(self.ctx, user, listener.listener))
        if not result.accepted:
            return None, [
                f"{self.who(user)} is refused with its valid credentials on {listener.id} "
                f"({result.detail}): clients cannot connect, password checks cannot be judged"
            ]
        return user, []

    def _with_certificate(self, listener: ListenerTarget, username: str, password: str) -> Identity:
        """A username/password attempt, carrying a valid certificate where one is required
        (so the password is what gets judged)."""
        holder = self.cast.two_factor_user or self.cast.device
        if listener.listener.requires_certificate and holder is not None:
            return Identity(
                self.ctx.pki.certificate_pem(holder),
                self.ctx.pki.private_key_pem(holder),
                username,
                password,
            )
        return Identity(username=username, password=password)

    def wildcard_username(self, listener: ListenerTarget) -> list[str]:
        problems = []
        for username in ("#", "+", ""):
            identity = self._with_certificate(listener, username, "")
            label = f"username '{username}' with an empty password"
            problems += self._must_refuse(listener, identity, label)
        return problems

    def empty_password(self, listener: ListenerTarget) -> list[str]:
        user, problems = self._valid_password_user(listener)
        if user is None:
            return problems
        identity = self._with_certificate(listener, user, "")
        return self._must_refuse(listener, identity, f"{self.who(user)} with an empty password")

    def wrong_password(self, listener: ListenerTarget) -> list[str]:
        user, problems = self._valid_password_user(listener)
        if user is None:
            return problems
        wrong = "iotfleet-compliance-wrong-password-" + "x" * 16
        identity = self._with_certificate(listener, user, wrong)
        return self._must_refuse(listener, identity, f"{self.who(user)} with a wrong password")

    # -- what a valid client may do -------------------------------------------------------------

    def own_topic(self, listener: ListenerTarget) -> list[str]:
        """The probe device publishes to its own telemetry topic."""
        device = self.cast.device
        assert device is not None
        topic = f"{self.prefix(device)}/telemetry/{PROBE_LEAF}"
        try:
            with self._session(listener, credentials(self.ctx, device, listener.listener)) as s:
                code = s.publish(topic, PROBE_PAYLOAD)
        except (ProbeError, TimeoutError) as exc:
            return [_failed_step(self.who(device), f"publish to {topic}", listener, exc)]
        if not succeeded(code):
            return [
                f"{self.who(device)} cannot publish to its own topic {topic} on {listener.id} "
                f"(PUBACK {code:#04x})"
            ]
        return []

    def forbidden_publications(self, user: str) -> list[str]:
        """Topics ``user`` must not publish to: another device's, its own commands (for a
        device), outside the topic root; minus what the inventory grants it."""
        other = self.prefix(self.cast.peer if self.cast.peer != user else None)
        candidates = [
            f"{other}/telemetry/{PROBE_LEAF}",
            f"{other}/status",
            f"{other}/commands/{PROBE_LEAF}",
            f"{PROBE_LEAF}/outside-the-topic-root",
        ]
        if any(d.id == user for d in self.ctx.fleet.devices):
            candidates.insert(0, f"{self.prefix(user)}/commands/{PROBE_LEAF}")
        grants = self.grants(user)
        return [t for t in candidates if not grants.can_write(t)]

    def publish_only_granted(self, listener: ListenerTarget, user: str) -> list[str]:
        topics = self.forbidden_publications(user)
        problems = []
        step = "connect"
        try:
            with self._session(listener, credentials(self.ctx, user, listener.listener)) as s:
                for topic in topics:
                    step = f"publish to {topic}"
                    code = s.publish(topic, PROBE_PAYLOAD)
                    if succeeded(code):
                        problems.append(
                            f"{self.who(user)} can publish to {topic} on {listener.id} "
                            f"(PUBACK {code:#04x}); the inventory does not allow it"
                        )
        except (ProbeError, TimeoutError) as exc:
            return [_failed_step(self.who(user), step, listener, exc)]
        return problems

    def _peer_listener(self) -> ListenerTarget | None:
        """A certificate listener of this broker the peer device can publish through."""
        for candidate in self.target.listeners:
            if candidate.listener.auth == "certificate" and candidate.reachable:
                return candidate
        return None

    def read_only_granted(self, listener: ListenerTarget, user: str) -> list[str]:
        """Subscribe to ``#``, ``$SYS/#`` and another device's topics, make traffic, and judge
        every message that arrives against what the inventory lets ``user`` read."""
        grants = self.grants(user)
        peer = self.cast.peer if self.cast.peer != user else None
        filters = ["#", "$SYS/#"] + ([f"{self.prefix(peer)}/#"] if peer else [])
        own = [t for t in (_concrete(f) for f in grants.write) if not t.startswith("$")]
        if any(d.id == user for d in self.ctx.fleet.devices):
            own.insert(0, f"{self.prefix(user)}/telemetry/{PROBE_LEAF}")
        peer_listener = self._peer_listener() if peer else None
        try:
            with ExitStack() as stack:
                spy = stack.enter_context(
                    self._session(listener, credentials(self.ctx, user, listener.listener))
                )
                for topic_filter in filters:
                    spy.subscribe(topic_filter)
                if own:
                    spy.publish(own[0], PROBE_PAYLOAD)
                if peer and peer_listener is not None:
                    peer_identity = credentials(self.ctx, peer, peer_listener.listener)
                    talker = stack.enter_context(self._session(peer_listener, peer_identity))
                    talker.publish(f"{self.prefix(peer)}/telemetry/{PROBE_LEAF}", PROBE_PAYLOAD)
                spy.idle(SETTLE_SECONDS)
                received = sorted({m.topic for m in spy.messages()})
        except (ProbeError, TimeoutError) as exc:
            return [_failed_step(self.who(user), "subscribe and publish", listener, exc)]
        problems = []
        for topic in received:
            if not grants.can_read(topic):
                via = next(f for f in filters if topic_matches(f, topic))
                problems.append(
                    f"{self.who(user)} can read {topic} on {listener.id} (subscribed to "
                    f"'{via}'); the inventory does not let it"
                )
        if len(problems) > 5:
            problems = [*problems[:5], f"... and {len(problems) - 5} more such topics"]
        return problems


def _failed_step(who: str, step: str, listener: ListenerTarget, exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"{who} got no answer from {listener.id} ({step}: timed out)"
    return f"{who} could not {step} on {listener.id}: {exc}"
