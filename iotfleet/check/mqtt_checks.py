"""MQTT attacks from outside against one broker's listeners; each method returns problems.

Refusals are only judged on a listener that answers (otherwise the problem says the check
could not judge), and password refusals only after the valid password was seen accepted, so
a broker that is down never passes by accident. Bad certificates must be refused by TLS
itself, not merely at CONNECT. Reads are judged by what arrives, never by SUBACKs (Mosquitto
grants subscriptions its ACL forbids and filters at delivery).

Probes publish non-retained QoS 1 messages with clean sessions that expire at once: nothing
is left on the broker. Their payload says what they are. The one exception is the retained
flood, which publishes retained messages on the probe device's own telemetry topics to count
what the broker keeps, and always clears them again (empty retained payloads).

The adversary checks (marker ``attack``) go further: the factor matrix tries every identity
kind with each of its factors alone, both, and with another identity's (``factors``); raw
attacks (``raw_attacks``) send an oversized CONNECT before authentication and a burst of new
connections to password listeners.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from iotfleet.check import raw_attacks
from iotfleet.check.factors import (
    CERTIFICATE,
    PASSWORD,
    Factors,
    Principal,
    describe_factors,
    matrix,
    mixed_pairs,
    principals_of,
    why_refused,
)
from iotfleet.check.identities import (
    ProbeCast,
    certified_names,
    credentials,
    listener_user,
    matrix_names,
    refused_certificate,
)
from iotfleet.check.mqtt_probe import (
    ConnectResult,
    Identity,
    ProbeError,
    Session,
    Target,
    session,
    succeeded,
)
from iotfleet.check.mqtt_probe import try_connect as _try_connect
from iotfleet.check.plan import BrokerTarget, ListenerTarget
from iotfleet.fleet.context import FleetContext
from iotfleet.model.own_identities import PROBE_DEVICES, probe_prefix
from iotfleet.mosquitto.acl import PATTERN_USER, acl_rules, device_patterns

PROBE_LEAF = "iotfleet-compliance"
PROBE_PAYLOAD = b"iotfleet compliance probe: not a measurement, ignore"
SETTLE_SECONDS = 0.5  # after the last PUBACK, for deliveries to arrive
NOBODY = "iotfleet-compliance-nobody"  # a device id no fleet has (topics of "another device")
NETWORK_RETRIES = 2  # a login attempt whose connection failed is tried again (rate limits)
NETWORK_RETRY_PAUSE = 1.0
RETAINED_FLOOD = 5  # retained messages the probe device tries to leave on its telemetry
# New connections at once from this host to a password-only listener, beyond the burst the
# inventory allows each source (firewall_password_burst): that many more must go unanswered.
BURST_MARGIN = 20
BURST_WAIT = 3.0  # seconds the burst's handshakes may take
RATE_LIMIT_RECOVERY = 30.0  # seconds waited, after a burst, for the listener to answer again
OVERSIZE_WAIT = 3.0  # seconds a broker has to close the connection of an oversized CONNECT
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
        self._principals: list[Principal] | None = None

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

    def _connect(self, listener: ListenerTarget, identity: Identity) -> ConnectResult:
        """One login attempt; one whose connection failed is tried again after a pause, so a
        broker's per-source rate limit does not turn into a false "cannot check"."""
        for attempt in range(NETWORK_RETRIES + 1):
            result = _try_connect(self.mqtt_target(listener), identity, timeout=self.timeout)
            if result.stage != "network" or attempt == NETWORK_RETRIES:
                return result
            time.sleep(NETWORK_RETRY_PAUSE)
        raise AssertionError("unreachable")

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

    # -- adversary: the factor matrix -----------------------------------------------------------

    def principals(self) -> list[Principal]:
        """One identity of every kind (``identities.matrix_names``), as the matrix sees it."""
        if self._principals is None:
            names = matrix_names(self.ctx.fleet, self.ctx.pki, set(self.ctx.passwords), self.cast)
            self._principals = principals_of(
                self.ctx.fleet,
                self.target.name,
                names,
                set(self.ctx.passwords),
                certified_names(self.ctx.pki, names),
                {name: self.who(name) for name in names},
            )
        return self._principals

    def _factor_identity(self, owner: str, factors: Factors, login: str | None = None) -> Identity:
        """``owner``'s certificate (if asked) and the password login of ``login`` (default the
        owner, if asked)."""
        certificate = key = username = password = None
        if CERTIFICATE in factors:
            certificate = self.ctx.pki.certificate_pem(owner)
            key = self.ctx.pki.private_key_pem(owner)
        if PASSWORD in factors:
            username = login or owner
            password = self.ctx.passwords[username].get_secret_value()
        return Identity(certificate, key, username, password)

    def _may_log_in_as(self, name: str) -> bool:
        """Attempts that must succeed are made only as the probe cast: a real identity's
        successful login would disconnect it (client id = username)."""
        return name in (self.cast.device, self.cast.peer)

    def factor_matrix(self, listener: ListenerTarget) -> list[str]:
        """Every identity kind with each of its factors alone and both: in exactly where the
        inventory lets it in (``factors.admitted``), refused everywhere else."""
        down = self.unreachable(listener)
        if down:
            return [f"cannot try the identities' factors: {down}"]
        auth = listener.listener.auth
        problems = []
        for attempt in matrix(auth, self.principals()):
            who, shown = attempt.principal, describe_factors(attempt.factors)
            if attempt.expected and not self._may_log_in_as(who.name):
                continue
            result = self._connect(listener, self._factor_identity(who.name, attempt.factors))
            if result.stage == "network":
                problems.append(f"cannot try {who.who} with {shown}: {result.detail}")
            elif attempt.expected and not result.accepted:
                problems.append(
                    f"{who.describe()} is refused on {listener.id} ({auth}) with {shown} "
                    f"({result.detail}); the inventory lets it in there"
                )
            elif not attempt.expected and result.accepted:
                if self._two_factor_confined(listener, who, attempt.factors):
                    continue
                problems.append(
                    f"{who.describe()} gets in on {listener.id} ({auth}) with {shown}: "
                    f"{why_refused(auth, who, attempt.factors)}"
                )
        return problems

    def _two_factor_confined(
        self, listener: ListenerTarget, who: Principal, factors: Factors
    ) -> bool:
        """A certificate on a certificate-only listener that must not let its owner in: a
        certificate+password client's (the listener ignores passwords), or the certificate of
        an identity this broker does not hold (a device of another site, a client of the
        cores only). Mosquitto takes the certificate as the login there without asking any
        plugin, so the connection cannot be refused; it counts as refused only if that
        session may do nothing (every subscription and publish its roles grant, on a broker
        that holds it, is denied: the plugin's ``identities_file``)."""
        if not (
            listener.listener.auth == "certificate"
            and (who.auth == "certificate+password" or not who.allowed)
            and CERTIFICATE in factors
        ):
            return False
        grants = self._grants_of(who.name, listener.broker)
        if not grants:
            return False
        concrete = "iotfleet-check"
        try:
            with self._session(listener, self._factor_identity(who.name, factors)) as s:
                for access, topic in grants:
                    if access in ("read", "readwrite") and s.subscribe(topic) < 0x80:
                        return False
                    if access in ("write", "readwrite"):
                        name = topic.replace("+", concrete).replace("#", concrete)
                        if s.publish(name) < 0x80:
                            return False
        except (ProbeError, TimeoutError):
            return False
        return True

    def _grants_of(self, name: str, broker: str) -> list[tuple[str, str]]:
        """What ``name`` may do on ``broker``, or else on the first broker that holds it; for
        a name ``broker`` does not hold, also what the ACL's device patterns would give that
        name there (its own ``devices/<name>/...``), which only the plugin's identities file
        keeps from it."""
        fleet = self.ctx.fleet
        patterns = [(a, t.replace(PATTERN_USER, name)) for a, t in device_patterns(fleet)]
        for candidate in [broker, *(b.name for b in fleet.brokers if b.name != broker)]:
            if name in fleet.users_of(candidate):
                grants = acl_rules(fleet, candidate).get(name, [])
                return grants if candidate == broker else [*grants, *patterns]
        return patterns

    def refused_login(self, listener: ListenerTarget) -> tuple[str, str] | str:
        """One login that must be refused: a made-up username with a random password (and the
        probe device's certificate where the listener asks for one). Returns the username and
        this host's address as the broker sees it, or why the attempt could not be made."""
        down = self.unreachable(listener)
        if down:
            return f"cannot try a refused login: {down}"
        certificate = key = None
        if listener.listener.requires_certificate:
            holder = self.cast.device
            if holder is None:
                return f"cannot open TLS on {listener.id}: no probe device with a certificate"
            certificate = self.ctx.pki.certificate_pem(holder)
            key = self.ctx.pki.private_key_pem(holder)
        user = f"iotfleet-check-{secrets.token_hex(4)}"
        identity = Identity(certificate, key, user, secrets.token_urlsafe(16))
        result = self._connect(listener, identity)
        if result.stage == "network":
            return f"cannot try a refused login on {listener.id}: {result.detail}"
        if result.accepted:
            return f"a made-up user {user!r} with a random password gets in on {listener.id}"
        return user, raw_attacks.source_address(listener.connect_name, listener.port)

    def mixed_identities(self, listener: ListenerTarget) -> list[str]:
        """On a certificate+password listener, one identity's certificate with another's
        login (username and its right password) is refused: the CN must be the username."""
        down = self.unreachable(listener)
        if down:
            return [f"cannot try mixed identities: {down}"]
        problems = []
        both = frozenset({CERTIFICATE, PASSWORD})
        for owner, login in mixed_pairs(self.principals()):
            identity = self._factor_identity(owner.name, both, login=login.name)
            result = self._connect(listener, identity)
            what = f"the certificate of {owner.who} with the login of {login.who}"
            if result.stage == "network":
                problems.append(f"cannot try {what}: {result.detail}")
            elif result.accepted:
                problems.append(
                    f"{what} gets in on {listener.id} as {login.name}: the certificate's CN "
                    f"({owner.name}) must be the username on a certificate+password listener"
                )
        return problems

    # -- adversary: raw attacks and floods -------------------------------------------------------

    def oversized_connect(self, listener: ListenerTarget) -> list[str]:
        """A CONNECT announcing 256 MiB, sent before any authentication, makes the broker close
        the connection at once instead of waiting for (and reserving) the rest."""
        certificate = key = None
        if listener.listener.requires_certificate:
            holder = self.cast.device or self.cast.two_factor_user
            if holder is None:
                return [f"cannot open TLS on {listener.id}: no identity with a certificate"]
            certificate = self.ctx.pki.certificate_pem(holder)
            key = self.ctx.pki.private_key_pem(holder)
        outcome = raw_attacks.send_oversized_connect(
            listener.connect_name,
            listener.port,
            self.ctx.pki.ca_chain_pem(),
            certificate_pem=certificate,
            private_key_pem=key,
            websockets=listener.websockets,
            wait=OVERSIZE_WAIT,
            timeout=self.timeout,
        )
        if outcome.stage != "sent":
            return [f"cannot send an oversized CONNECT to {listener.id}: {outcome.detail}"]
        if not outcome.closed:
            announced = raw_attacks.MAX_REMAINING_LENGTH
            return [
                f"a CONNECT announcing {announced} bytes (256 MiB) before authentication is "
                f"not refused on {listener.id}: {outcome.detail} after {outcome.seconds:.0f} s "
                "(the broker waits for the rest: no max_packet_size)"
            ]
        return []

    def _reader(self, device: str) -> tuple[str, ListenerTarget] | None:
        """An identity of the fleet that may read ``device``'s telemetry, with a listener of
        this broker it may log in on (first by name)."""
        topic = f"{self.prefix(device)}/telemetry/{PROBE_LEAF}"
        clients = {c.name: c for c in self.ctx.fleet.active_clients}
        for name in sorted(clients):
            if not self.grants(name).can_read(topic):
                continue
            client = clients[name]
            for candidate in self.target.listeners:
                if not candidate.reachable or candidate.listener.auth != client.auth:
                    continue
                if candidate.listener.requires_password and name not in self.ctx.passwords:
                    continue
                return name, candidate
        return None

    def retained_flood(self, listener: ListenerTarget) -> list[str]:
        """The probe device leaves retained messages on several of its own telemetry topics;
        a fresh subscriber then finds at most the contract's one (on ``<prefix>/status``).
        Whatever was retained is cleared again with empty retained payloads."""
        device = self.cast.device
        assert device is not None
        prefix = self.prefix(device)
        topics = [f"{prefix}/telemetry/{PROBE_LEAF}/retained-{n}" for n in range(RETAINED_FLOOD)]
        identity = credentials(self.ctx, device, listener.listener)
        codes: list[int | None] = []
        try:
            with self._session(listener, identity) as s:
                for topic in topics:
                    codes.append(s.publish(topic, PROBE_PAYLOAD, retain=True))
        except ProbeError as exc:
            return [_failed_step(self.who(device), "publish retained messages", listener, exc)]
        except TimeoutError:
            codes.append(None)  # no PUBACK (the broker may drop the session): count what it kept
        if all(code is not None and not succeeded(code) for code in codes):
            return []  # every retained publish refused (PUBACK 0x87): nothing was kept
        reader = self._reader(device)
        if reader is None:
            self._clear_retained(listener, identity, topics)
            return [
                f"the broker accepted retained publishes of {self.who(device)} on its telemetry "
                f"({listener.id}), and no identity of the fleet may read them back to count them"
            ]
        name, reader_listener = reader
        try:
            reader_identity = credentials(self.ctx, name, reader_listener.listener)
            with self._session(reader_listener, reader_identity) as spy:
                spy.subscribe(f"{prefix}/#")
                spy.idle(SETTLE_SECONDS)
                kept = sorted({m.topic for m in spy.messages(prefix) if m.retain and m.payload})
        except (ProbeError, TimeoutError) as exc:
            self._clear_retained(listener, identity, topics)
            return [_failed_step(self.who(name), "read retained messages", reader_listener, exc)]
        # Only telemetry: a retained command an operator left for the device is not its own.
        extra = [t for t in kept if t.startswith(f"{prefix}/telemetry/")]
        self._clear_retained(listener, identity, sorted({*topics, *extra}))
        if not extra:
            return []
        return [
            f"{self.who(device)} keeps {len(extra)} retained message(s) on its own telemetry "
            f"topics via {listener.id} (a fresh subscriber, {self.who(name)} on "
            f"{reader_listener.id}, read them back); only {prefix}/status may hold one"
        ]

    def _clear_retained(
        self, listener: ListenerTarget, identity: Identity, topics: list[str]
    ) -> None:
        """Empty retained payloads: the broker forgets what the flood left (best effort)."""
        try:
            with self._session(listener, identity) as s:
                for topic in topics:
                    s.publish(topic, b"", retain=True)
        except (ProbeError, TimeoutError):
            pass

    def password_rate_limit(self, listener: ListenerTarget, allowed_burst: int) -> list[str]:
        """A burst of ``allowed_burst`` + ``BURST_MARGIN`` new connections from this host to a
        password-only listener is not all answered: each connection could try passwords.
        Afterwards it waits (bounded) until the listener answers this host again, so later
        checks and runs are not locked out."""
        down = self.unreachable(listener)
        if down:
            return [f"cannot try a connection burst: {down}"]
        burst = allowed_burst + BURST_MARGIN
        answered = raw_attacks.connection_burst(
            listener.connect_name, listener.port, burst, BURST_WAIT
        )
        deadline = time.monotonic() + RATE_LIMIT_RECOVERY
        while time.monotonic() < deadline:
            if raw_attacks.answers(listener.connect_name, listener.port):
                break
            time.sleep(1)
        if answered >= burst:
            return [
                f"no per-source rate limit on {listener.id}: all {answered} new connections "
                f"opened at once from this host were answered within {BURST_WAIT:g} s (each "
                "one can try passwords)"
            ]
        return []


def _failed_step(who: str, step: str, listener: ListenerTarget, exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"{who} got no answer from {listener.id} ({step}: timed out)"
    return f"{who} could not {step} on {listener.id}: {exc}"
