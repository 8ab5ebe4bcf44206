"""Judge a broker's whole nftables ruleset (``nft -j list ruleset``) against the inventory.

A packet reaches the broker only if every chain on the input hook lets it through, but a
ruleset is only as trustworthy as its widest accept: every accept in any table, family or
priority, and in the chains those reach by jump or goto, must be one the inventory asks for.
Allowed: replies (established/related), loopback, the ICMP types the role opens, and TCP to
the expected ports, SSH only from ``firewall_ssh_sources`` when those are set. Each problem is
one sentence naming the host, what is open and the rule that opens it. Pure functions.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from iotfleet.model import Broker

IOTFLEET_TABLE = ("inet", "iotfleet")
INPUT_FAMILIES = ("inet", "ip", "ip6")
# What roles/firewall opens for ICMP (names as nft -j prints them).
ICMP_TYPES = frozenset({"echo-request", "destination-unreachable", "time-exceeded"})
ICMPV6_TYPES = frozenset(
    {
        "echo-request",
        "destination-unreachable",
        "packet-too-big",
        "time-exceeded",
        "parameter-problem",
        "nd-router-advert",
        "nd-neighbor-solicit",
        "nd-neighbor-advert",
    }
)
REPLY_STATES = frozenset({"established", "related"})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RulesetError(ValueError):
    """``nft -j`` output that is not a ruleset."""


@dataclass(frozen=True)
class Chain:
    family: str
    table: str
    name: str
    hook: str | None = None
    prio: int | str | None = None
    policy: str | None = None
    rules: tuple[tuple[dict[str, Any], ...], ...] = ()
    type: str | None = None  # filter, nat, route

    @property
    def where(self) -> str:
        return f"chain {self.family} {self.table} {self.name}"


@dataclass(frozen=True)
class Ruleset:
    chains: dict[tuple[str, str, str], Chain]
    sets: dict[tuple[str, str, str], tuple[Any, ...]]

    def input_chains(self) -> list[Chain]:
        # Filter chains only: a nat chain on the input hook rewrites, it does not decide.
        return [
            c
            for c in self.chains.values()
            if c.hook == "input" and c.family in INPUT_FAMILIES and c.type in (None, "filter")
        ]

    def chain(self, family: str, table: str, name: str) -> Chain | None:
        return self.chains.get((family, table, name))


def parse_ruleset(text: str) -> Ruleset:
    """The chains (with their rules) and named sets of ``nft -j list ruleset``."""
    try:
        items = json.loads(text or '{"nftables": []}')["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RulesetError(f"not the JSON of nft -j list ruleset: {exc}") from None
    chains: dict[tuple[str, str, str], Chain] = {}
    rules: dict[tuple[str, str, str], list[tuple[dict[str, Any], ...]]] = {}
    sets: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            key = (c["family"], c["table"], c["name"])
            chains[key] = Chain(
                *key, c.get("hook"), c.get("prio"), c.get("policy"), type=c.get("type")
            )
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(tuple(r["expr"]))
        elif "set" in item or "map" in item:
            s = item.get("set") or item["map"]
            sets[(s["family"], s["table"], s["name"])] = tuple(s.get("elem", ()))
    for key, chain_rules in rules.items():
        if key in chains:
            chains[key] = replace(chains[key], rules=tuple(chain_rules))
    return Ruleset(chains, sets)


# -- what one rule matches -------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What an accepted packet is known to satisfy (None: not restricted)."""

    states: frozenset[str] | None = None
    interfaces: tuple[str, ...] | None = None
    families: frozenset[int] | None = None  # 4, 6
    sources: tuple[Network, ...] | None = None  # of the families above
    l4: frozenset[str] | None = None  # tcp, udp, icmp, ipv6-icmp
    ports: tuple[int | tuple[int, int], ...] | None = None
    icmp_types: frozenset[str] | None = None
    text: tuple[str, ...] = ()  # the rule as nft would say it, for messages
    via: tuple[str, ...] = ()  # jumps that led here

    def narrowed(self, **changes: Any) -> Match:
        return replace(self, **changes)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        if "payload" in value:
            return f"{value['payload']['protocol']} {value['payload']['field']}"
        if "meta" in value:
            return f"meta {value['meta']['key']}"
        if "ct" in value:
            return f"ct {value['ct']['key']}"
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{low}-{high}"
        if "set" in value:
            return "{ " + ", ".join(_describe(v) for v in value["set"]) + " }"
        if "elem" in value:
            return _describe(value["elem"].get("val"))
        if "&" in value:
            return " & ".join(_describe(v) for v in value["&"])
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(_describe(v) for v in value)
    return str(value)


def _statement_text(expr: Mapping[str, Any]) -> str:
    if "match" in expr:
        m = expr["match"]
        op = "" if m["op"] in ("==", "in") else f"{m['op']} "
        right = _describe(m["right"])
        if m["left"].get("meta", {}).get("key") in ("iif", "iifname", "oif", "oifname"):
            right = json.dumps(m["right"]) if isinstance(m["right"], str) else right
        return f"{_describe(m['left'])} {op}{right}"
    key = next(iter(expr))
    value = expr[key]
    if key in ("jump", "goto"):
        return f"{key} {value['target']}"
    if key == "vmap":
        return f"{_describe(value['key'])} vmap {_describe(value['data'])}"
    return key if value is None else f"{key} …"


def _values(right: Any, sets: Mapping[str, tuple[Any, ...]]) -> list[Any]:
    """The elements a match's right side stands for (anonymous or named set, or one value)."""
    if isinstance(right, str) and right.startswith("@"):
        return [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                for e in sets.get(right[1:], ())]  # fmt: skip
    if isinstance(right, dict) and "set" in right:
        return [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                for e in right["set"]]  # fmt: skip
    return [right]


def _port(value: Any) -> int | tuple[int, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and "range" in value:
        low, high = (_port(v) for v in value["range"])
        return (low, high) if isinstance(low, int) and isinstance(high, int) else None
    if isinstance(value, str):
        try:
            return socket.getservbyname(value, "tcp")
        except OSError:
            return None
    return None


def _network(value: Any) -> list[Network] | None:
    try:
        if isinstance(value, str):
            return [ipaddress.ip_network(value)]
        if isinstance(value, dict) and "prefix" in value:
            p = value["prefix"]
            return [ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)]
        if isinstance(value, dict) and "range" in value:
            low, high = (ipaddress.ip_address(v) for v in value["range"])
            return list(ipaddress.summarize_address_range(low, high))
    except (ValueError, TypeError):
        return None
    return None


def _narrow(match: Match, expr: Mapping[str, Any], sets: Mapping[str, tuple[Any, ...]]) -> Match:
    """``match`` restricted by one ``match`` expression; unknown or negated ones restrict
    nothing (judging them as wide errs on the side of reporting)."""
    m = expr["match"]
    if m["op"] not in ("==", "in"):
        return match
    left, values = m["left"], _values(m["right"], sets)
    if "ct" in left and left["ct"].get("key") == "state":
        states = {s for v in values for s in (v if isinstance(v, list) else [v])}
        return match.narrowed(states=frozenset(states))
    if "meta" in left:
        key = left["meta"]["key"]
        if key in ("iif", "iifname") and all(isinstance(v, str) for v in values):
            return match.narrowed(interfaces=tuple(values))
        if key == "nfproto":
            families = frozenset({4} if "ipv4" in values else set()) | (
                {6} if "ipv6" in values else set()
            )
            return match.narrowed(families=families)
        if key == "l4proto":
            return match.narrowed(l4=frozenset(str(v) for v in values))
        return match
    if "payload" not in left:
        return match
    proto, fld = left["payload"]["protocol"], left["payload"]["field"]
    if (proto, fld) in (("ip", "saddr"), ("ip6", "saddr")):
        networks: list[Network] = []
        for value in values:
            found = _network(value)
            if found is None:
                return match
            networks.extend(found)
        family = 4 if proto == "ip" else 6
        return match.narrowed(families=frozenset({family}), sources=tuple(networks))
    if (proto, fld) in (("ip", "protocol"), ("ip6", "nexthdr")):
        return match.narrowed(
            families=frozenset({4 if proto == "ip" else 6}), l4=frozenset(map(str, values))
        )
    if fld == "type" and proto in ("icmp", "icmpv6"):
        return match.narrowed(
            l4=frozenset({"icmp" if proto == "icmp" else "ipv6-icmp"}),
            icmp_types=frozenset(map(str, values)),
        )
    if fld == "dport" and proto in ("tcp", "udp", "th", "sctp", "dccp"):
        ports = [_port(v) for v in values]
        if any(p is None for p in ports):
            return match
        l4 = match.l4 if proto == "th" else frozenset({proto})
        return match.narrowed(ports=tuple(p for p in ports if p is not None), l4=l4)
    return match


@dataclass(frozen=True)
class Accept:
    """One way a packet gets accepted: what it must match and where the accept is."""

    match: Match
    chain: Chain


def accepts(ruleset: Ruleset, chain: Chain, inherited: Match | None = None) -> Iterator[Accept]:
    """Every accept reachable from ``chain`` (following jumps, gotos and verdict maps)."""
    yield from _accepts(ruleset, chain, inherited or Match(), set())


def _accepts(ruleset: Ruleset, chain: Chain, inherited: Match, seen: set[str]) -> Iterator[Accept]:
    if chain.where in seen:
        return
    seen = seen | {chain.where}
    sets = {name: elems for (fam, tab, name), elems in ruleset.sets.items()
            if (fam, tab) == (chain.family, chain.table)}  # fmt: skip
    for exprs in chain.rules:
        match = inherited.narrowed(text=(*inherited.text, " ".join(map(_statement_text, exprs))))
        for expr in exprs:
            if "match" in expr:
                match = _narrow(match, expr, sets)
            elif "accept" in expr:
                yield Accept(match, chain)
                break
            elif "jump" in expr or "goto" in expr:
                target = ruleset.chain(
                    chain.family, chain.table, (expr.get("jump") or expr["goto"])["target"]
                )
                if target is not None:
                    via = match.narrowed(
                        via=(*match.via, f"{chain.where} {_verb(expr)} {target.name}")
                    )
                    yield from _accepts(ruleset, target, via, seen)
                break
            elif "vmap" in expr:
                yield from _vmap(ruleset, chain, match, expr["vmap"], sets, seen)
                break
            elif any(k in expr for k in ("drop", "reject", "return", "queue")):
                break


def _verb(expr: Mapping[str, Any]) -> str:
    return "jumps to" if "jump" in expr else "goes to"


def _vmap(
    ruleset: Ruleset,
    chain: Chain,
    match: Match,
    vmap: Mapping[str, Any],
    sets: Mapping[str, tuple[Any, ...]],
    seen: set[str],
) -> Iterator[Accept]:
    entries = _values(vmap["data"], sets)
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 2:
            continue
        key, verdict = entry
        narrowed = _narrow(match, {"match": {"op": "==", "left": vmap["key"], "right": key}}, {})
        if "accept" in verdict:
            yield Accept(narrowed, chain)
        elif "jump" in verdict or "goto" in verdict:
            target = ruleset.chain(
                chain.family, chain.table, (verdict.get("jump") or verdict["goto"])["target"]
            )
            if target is not None:
                yield from _accepts(ruleset, target, narrowed, seen)


# -- judging ---------------------------------------------------------------------------------


def expected_open_ports(broker: Broker) -> set[int]:
    """SSH, listeners reachable from the network and extra ports (as roles/firewall opens)."""
    return broker.network_ports() | {broker.firewall_ssh_port}


def _ports_text(ports: Iterable[int | tuple[int, int]]) -> str:
    return ", ".join(str(p) if isinstance(p, int) else f"{p[0]}-{p[1]}" for p in ports)


def _networks_text(networks: Iterable[Network]) -> str:
    return ", ".join(str(n) for n in networks)


@dataclass
class _Judgement:
    host: str
    broker: Broker
    problems: list[str] = field(default_factory=list)
    opened: set[int] = field(default_factory=set)

    def report(self, accept: Accept, what: str) -> None:
        rule = " ".join(accept.match.text[-1:])
        via = f", reached as {'; '.join(accept.match.via)}" if accept.match.via else ""
        self.problems.append(
            f"the firewall on {self.host} {what} ({accept.chain.where}{via}: '{rule}')"
        )

    def judge(self, accept: Accept) -> None:
        m = accept.match
        if m.states is not None and m.states <= REPLY_STATES:
            return  # replies to what was let in
        if m.interfaces is not None and set(m.interfaces) <= {"lo"}:
            return
        if m.l4 is not None and m.l4 <= {"icmp", "ipv6-icmp"} and m.ports is None:
            allowed = ICMP_TYPES if m.l4 == {"icmp"} else ICMPV6_TYPES
            if m.l4 == {"icmp", "ipv6-icmp"}:
                allowed = ICMP_TYPES & ICMPV6_TYPES
            if m.icmp_types is None:
                self.report(accept, "accepts every ICMP type")
            elif types := sorted(m.icmp_types - allowed):
                self.report(accept, f"accepts ICMP {', '.join(types)}, which iotfleet does not")
            return
        scope = self._scope(m)
        if m.ports is None:
            self.report(accept, f"accepts every connection{scope}")
            return
        ranges = [p for p in m.ports if isinstance(p, tuple) and p[0] != p[1]]
        if ranges:
            self.report(accept, f"accepts the port range {_ports_text(ranges)}{scope}")
        ports = {p if isinstance(p, int) else p[0] for p in m.ports if p not in ranges}
        protocols = m.l4 or frozenset({"tcp", "udp"})
        if protocols - {"tcp"}:
            names = "/".join(sorted(p.upper() for p in protocols - {"tcp"}))
            self.report(
                accept, f"opens {names} {_ports_text(sorted(ports))}, which the inventory does not"
            )
        if "tcp" not in protocols:
            return
        wanted = expected_open_ports(self.broker)
        if extra := sorted(ports - wanted):
            self.report(accept, f"opens TCP {_ports_text(extra)}, which the inventory does not")
        self.opened |= ports & wanted
        ssh = self.broker.firewall_ssh_port
        if ssh in ports and self.broker.firewall.ssh_sources:
            self._judge_ssh_sources(accept)

    def _scope(self, m: Match) -> str:
        parts = []
        if m.interfaces is not None:
            parts.append(f" arriving on {', '.join(m.interfaces)}")
        if m.sources is not None:
            parts.append(f" from {_networks_text(m.sources)}")
        elif m.families is None and m.interfaces is None:
            parts.append(" from anywhere")
        return "".join(parts)

    def _judge_ssh_sources(self, accept: Accept) -> None:
        allowed = [ipaddress.ip_network(s) for s in self.broker.firewall.ssh_sources]
        port = self.broker.firewall_ssh_port
        inventory = _networks_text(allowed)
        m = accept.match
        if m.sources is None:
            families = sorted(m.families or {4, 6})
            wide = " and ".join("0.0.0.0/0" if f == 4 else "::/0" for f in families)
            self.report(
                accept,
                f"accepts SSH (port {port}) from anywhere ({wide}); firewall_ssh_sources "
                f"allows only {inventory}",
            )
            return
        wider = [n for n in m.sources if not any(_within(n, a) for a in allowed)]
        if wider:
            self.report(
                accept,
                f"accepts SSH (port {port}) from {_networks_text(wider)}, wider than "
                f"firewall_ssh_sources ({inventory})",
            )


def _within(network: Network, allowed: Network) -> bool:
    return network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]


def firewall_problems(
    host: str, broker: Broker, ruleset_json: str | None, unit_enabled: bool
) -> list[str]:
    """Every way the loaded ruleset lets in more (or less) than the inventory says."""
    ruleset = parse_ruleset(ruleset_json or "")
    own = ruleset.chain(*IOTFLEET_TABLE, "input")
    if own is None or own.hook != "input":
        return [f"the firewall table inet iotfleet is not loaded on {host}: every port is open"]
    judgement = _Judgement(host, broker)
    for chain in sorted(ruleset.input_chains(), key=lambda c: c.where):
        if chain.policy != "drop":
            judgement.problems.append(
                f"the firewall on {host} does not drop by default: {chain.where} (input hook, "
                f"priority {chain.prio}) has policy {chain.policy or 'accept'}"
            )
        for accept in accepts(ruleset, chain):
            judgement.judge(accept)
    missing = sorted(expected_open_ports(broker) - judgement.opened)
    problems = judgement.problems
    if missing:
        problems.append(
            f"the firewall on {host} blocks TCP {_ports_text(missing)} that the inventory opens"
        )
    problems.extend(password_limit_problems(host, broker, ruleset))
    if not unit_enabled:
        problems.append(
            f"iotfleet-firewall.service is not enabled on {host}: no firewall after a reboot"
        )
    return problems


# -- the per-source limit on password listeners ----------------------------------------------


@dataclass(frozen=True)
class SourceLimit:
    """A rule dropping new connections of a source over its rate (a dynamic set update)."""

    family: int
    ports: frozenset[int]
    rate: int
    per: str
    burst: int
    exempt: tuple[Network, ...]


def source_limits(
    chain: Chain, sets: Mapping[str, tuple[Any, ...]] | None = None
) -> list[SourceLimit]:
    found = []
    for exprs in chain.rules:
        if not any("drop" in e for e in exprs):
            continue
        ports: set[int] = set()
        exempt: list[Network] = []
        for expr in exprs:
            if "match" in expr:
                m = expr["match"]
                left = m["left"].get("payload", {})
                if left.get("field") == "dport" and m["op"] == "==":
                    ports |= {
                        p for p in map(_port, _values(m["right"], sets or {})) if isinstance(p, int)
                    }
                if left.get("field") == "saddr" and m["op"] == "!=":
                    for value in _values(m["right"], sets or {}):
                        exempt.extend(_network(value) or [])
            update = expr.get("set")
            if isinstance(update, dict) and update.get("op") in ("update", "add"):
                key = update["elem"]
                key = key["&"][0] if isinstance(key, dict) and "&" in key else key
                protocol = key.get("payload", {}).get("protocol") if isinstance(key, dict) else None
                limits = [s["limit"] for s in update.get("stmt", []) if "limit" in s]
                if protocol in ("ip", "ip6") and limits and limits[0].get("inv"):
                    limit = limits[0]
                    found.append(
                        SourceLimit(
                            4 if protocol == "ip" else 6,
                            frozenset(ports),
                            int(limit["rate"]),
                            str(limit.get("per", "second")),
                            int(limit.get("burst", 0)),
                            tuple(exempt),
                        )
                    )
    return found


def password_limit_problems(host: str, broker: Broker, ruleset: Ruleset) -> list[str]:
    """Password listeners limit new connections per source as the inventory says."""
    settings = broker.firewall
    ports = broker.password_ports()
    own = ruleset.chain(*IOTFLEET_TABLE, "input")
    if not ports or settings.password_rate == 0 or own is None:
        return []
    sets = {n: e for (f, t, n), e in ruleset.sets.items() if (f, t) == IOTFLEET_TABLE}
    limits = source_limits(own, sets)
    wanted = f"{settings.password_rate}/minute, burst {settings.password_burst}"
    exempt = {ipaddress.ip_network(n) for n in settings.password_limit_exempt}
    problems = []
    for family, name in ((4, "IPv4"), (6, "IPv6")):
        mine = [lim for lim in limits if lim.family == family]
        unlimited = sorted(ports - {p for lim in mine for p in lim.ports})
        if unlimited:
            problems.append(
                f"the firewall on {host} does not limit new {name} connections per source to "
                f"password listener(s) {_ports_text(unlimited)} (the inventory asks for "
                f"{wanted}): passwords can be guessed as fast as the network allows"
            )
        for lim in mine:
            if (lim.rate, lim.per, lim.burst) != (
                settings.password_rate,
                "minute",
                settings.password_burst,
            ):
                problems.append(
                    f"the firewall on {host} limits {name} sources on "
                    f"{_ports_text(sorted(lim.ports))} to {lim.rate}/{lim.per}, burst "
                    f"{lim.burst}; the inventory asks for {wanted}"
                )
            extra = sorted(str(n) for n in set(lim.exempt) - exempt if n.version == family)
            if extra:
                problems.append(
                    f"the firewall on {host} exempts {', '.join(extra)} from the password "
                    "listeners' limit, which firewall_password_limit_exempt does not"
                )
    return problems
