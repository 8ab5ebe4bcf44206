"""Multi-site topology checks: sites of edge brokers, core brokers, who belongs where.

A fleet without ``fleet_sites`` has one implicit site (every device on every broker) and none
of these checks apply, except that sites named by devices or clients must then exist.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence

from iotfleet.model.errors import Problem
from iotfleet.model.fleet import Broker, Client, Device, Site
from iotfleet.model.settings import Listener


def check_topology(
    sites: Sequence[Site],
    core_brokers: Sequence[str],
    brokers: Sequence[Broker],
    devices: Sequence[Device],
    clients: Sequence[Client],
    problems: list[Problem],
) -> None:
    """Append every topology problem to ``problems`` (all of them, not just the first)."""
    by_name = {b.name: b for b in brokers}
    _check_cores(core_brokers, sites, by_name, problems)
    _check_sites(sites, core_brokers, by_name, problems)
    _check_bridge_reach(sites, core_brokers, by_name, problems)
    _check_members(sites, core_brokers, devices, clients, problems)


def _check_cores(
    core_brokers: Sequence[str],
    sites: Sequence[Site],
    by_name: dict[str, Broker],
    problems: list[Problem],
) -> None:
    where, key = "inventory", "fleet_core_brokers"
    if core_brokers and not sites:
        problems.append(
            Problem(where, key, "core brokers without fleet_sites: list the sites and their edges")
        )
    for name, count in Counter(core_brokers).items():
        if count > 1:
            problems.append(Problem(where, key, f"{name!r} is listed {count} times"))
    for name in dict.fromkeys(core_brokers):
        broker = by_name.get(name)
        if broker is None:
            problems.append(Problem(where, key, f"{name!r} is not a broker host"))
        elif bridge_listener(broker) is None:
            problems.append(
                Problem(
                    f"host {name}",
                    "mosquitto_listeners",
                    "a core broker needs a TLS listener with auth: certificate for the bridges "
                    "of its edges",
                )
            )


def _check_sites(
    sites: Sequence[Site],
    core_brokers: Sequence[str],
    by_name: dict[str, Broker],
    problems: list[Problem],
) -> None:
    if not sites:
        return
    for name, count in Counter(s.name for s in sites).items():
        if count > 1:
            problems.append(Problem(f"site {name}", "name", f"used {count} times in fleet_sites"))
    cores = set(core_brokers)
    edge_of: dict[str, str] = {}
    for site in sites:
        where = f"site {site.name}"
        if not site.edges:
            problems.append(Problem(where, "edges", "a site needs at least one edge broker"))
        for edge in site.edges:
            if edge not in by_name:
                problems.append(Problem(where, "edges", f"{edge!r} is not a broker host"))
            elif edge in cores:
                problems.append(
                    Problem(
                        where,
                        "edges",
                        f"{edge!r} is a core broker (fleet_core_brokers): a broker is either an "
                        "edge of one site or a core",
                    )
                )
            elif edge in edge_of and edge_of[edge] != site.name:
                problems.append(
                    Problem(
                        where,
                        "edges",
                        f"{edge!r} is also an edge of site {edge_of[edge]}: an edge serves "
                        "one site",
                    )
                )
            edge_of.setdefault(edge, site.name)
    for site in sites:
        _check_site_cores(site, core_brokers, by_name, edge_of, problems)
    for name in by_name:
        if name not in edge_of and name not in cores:
            problems.append(
                Problem(
                    f"host {name}",
                    "fleet_sites",
                    "neither an edge of a site nor in fleet_core_brokers: with sites, every "
                    "broker is one or the other",
                )
            )


def _check_site_cores(
    site: Site,
    core_brokers: Sequence[str],
    by_name: dict[str, Broker],
    edge_of: dict[str, str],
    problems: list[Problem],
) -> None:
    where = f"site {site.name}"
    cores = list(site.cores) if site.cores is not None else list(core_brokers)
    if not cores:
        edges = ", ".join(site.edges) or "its edges"
        problems.append(
            Problem(
                where,
                "cores",
                f"{edges}: an edge needs a core broker to bridge to (fleet_core_brokers, or "
                "cores of the site)",
            )
        )
    for core in site.cores or []:
        if core in edge_of:
            problems.append(
                Problem(
                    where,
                    "cores",
                    f"{core!r} is an edge of site {edge_of[core]}: an edge bridging to an edge "
                    "would loop; edges bridge to core brokers only",
                )
            )
        elif core not in by_name:
            problems.append(Problem(where, "cores", f"{core!r} is not a broker host"))
        elif core not in core_brokers:
            problems.append(Problem(where, "cores", f"{core!r} is not in fleet_core_brokers"))
    for core, count in Counter(site.cores or []).items():
        if count > 1:
            problems.append(Problem(where, "cores", f"{core!r} is listed {count} times"))


def _check_bridge_reach(
    sites: Sequence[Site],
    core_brokers: Sequence[str],
    by_name: dict[str, Broker],
    problems: list[Problem],
) -> None:
    """A core whose bridge listener binds loopback only cannot be reached by edges on other
    hosts; an edge on the same machine (same ``ssh_hostname``, another SSH port: containers
    of one host, a test) can."""
    for core_name in dict.fromkeys(core_brokers):
        core = by_name.get(core_name)
        listener = bridge_listener(core) if core is not None else None
        if core is None or listener is None or not _loopback_only(listener):
            continue
        remote = [
            edge
            for site in sites
            if core_name in (site.cores if site.cores is not None else core_brokers)
            for edge in site.edges
            if edge in by_name and by_name[edge].ssh_hostname != core.ssh_hostname
        ]
        if remote:
            problems.append(
                Problem(
                    f"host {core_name}",
                    "mosquitto_listeners",
                    f"the bridges' listener (port {listener.port}, auth: certificate) binds "
                    f"loopback only ({listener.bind_address}): edge(s) "
                    f"{', '.join(dict.fromkeys(remote))} on other hosts could never reach it; "
                    "bind it to an address the edges reach, or leave bind_address out",
                )
            )


def _loopback_only(listener: Listener) -> bool:
    bind = listener.bind_address
    return bind is not None and ipaddress.ip_address(bind).is_loopback


def _check_members(
    sites: Sequence[Site],
    core_brokers: Sequence[str],
    devices: Sequence[Device],
    clients: Sequence[Client],
    problems: list[Problem],
) -> None:
    names = [s.name for s in sites]
    known = ", ".join(names) if names else "the inventory declares no fleet_sites"
    for device in devices:
        where = f"device {device.id}"
        if device.site is None and sites:
            problems.append(Problem(where, "site", f"required: this fleet has sites ({known})"))
        elif device.site is not None and device.site not in names:
            problems.append(Problem(where, "site", f"unknown site {device.site!r} ({known})"))
        else:
            _check_scope(where, device.site, device.brokers, sites, core_brokers, problems)
    for client in clients:
        where = f"client {client.name}"
        if client.site is not None and client.site not in names:
            problems.append(Problem(where, "site", f"unknown site {client.site!r} ({known})"))
        else:
            _check_scope(where, client.site, client.brokers, sites, core_brokers, problems)


def _check_scope(
    where: str,
    site_name: str | None,
    brokers: list[str] | None,
    sites: Sequence[Site],
    core_brokers: Sequence[str],
    problems: list[Problem],
) -> None:
    """A device's or client's own broker list must stay within its site's brokers."""
    if not sites or brokers is None:
        return
    site = next((s for s in sites if s.name == site_name), None)
    if site is None:
        scope, label = list(core_brokers), "the core brokers (no site)"
    else:
        cores = site.cores if site.cores is not None else core_brokers
        scope, label = [*site.edges, *cores], f"site {site.name}'s edges and cores"
    for name in brokers:
        if name not in scope:
            problems.append(Problem(where, "brokers", f"{name!r} is not one of {label}"))


def bridge_listener_port(broker: Broker) -> int:
    """The port the edges' bridges connect to on core ``broker`` (validated to exist)."""
    listener = bridge_listener(broker)
    if listener is None:
        raise ValueError(f"{broker.name} has no certificate listener for bridges")
    return listener.port


def bridge_listener(broker: Broker) -> Listener | None:
    """The TLS MQTT listener of ``broker`` that takes client certificates only and that other
    hosts reach (the first such; else the first bound to loopback: validation refuses it when
    an edge is another host)."""
    candidates = [
        lst
        for lst in broker.mosquitto.listeners
        if lst.tls and lst.auth == "certificate" and lst.protocol == "mqtt"
    ]
    reachable = [lst for lst in candidates if not _loopback_only(lst)]
    return next(iter(reachable or candidates), None)
