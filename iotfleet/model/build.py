"""Turn raw inventory data (hosts, groups, data dicts) into a validated ``Fleet``.

Every problem is collected and reported at once, each naming the host or device and the key,
so a user fixes the inventory in one go and no host is touched before it is right.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from iotfleet.model.errors import InventoryError, Problem
from iotfleet.model.fleet import (
    BUILTIN_ROLES,
    Broker,
    Client,
    Device,
    FlashStation,
    Fleet,
    PkiConfig,
    Role,
    Site,
)
from iotfleet.model.names import check_topic_name, is_dns_name, opens_other_devices
from iotfleet.model.settings import (
    FirewallSettings,
    GatewaySettings,
    MosquittoSettings,
    SshHardeningSettings,
)
from iotfleet.model.topology import check_topology

BROKERS_GROUP = "brokers"
STATIONS_GROUP = "flash_stations"
LOCAL_STATION = "@local"

FLEET_KEYS = {
    "fleet_name",
    "fleet_devices",
    "fleet_clients",
    "fleet_roles",
    "fleet_topic_root",
    "fleet_sites",
    "fleet_core_brokers",
}
# Prefix -> settings model; every key with one of these prefixes must be known.
PREFIXED_MODELS: dict[str, type[BaseModel]] = {
    "mosquitto_": MosquittoSettings,
    "firewall_": FirewallSettings,
    "ssh_hardening_": SshHardeningSettings,
    "espgw_": GatewaySettings,
    "pki_": PkiConfig,
}

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RawHost:
    """One inventory host as pyinfra sees it (name, groups, merged data)."""

    name: str
    groups: tuple[str, ...]
    data: Mapping[str, Any] = field(default_factory=dict)


def known_keys() -> set[str]:
    keys = set(FLEET_KEYS)
    for prefix, model in PREFIXED_MODELS.items():
        keys.update(prefix + name for name in model.model_fields)
    return keys


def build_fleet(hosts: Sequence[RawHost]) -> Fleet:
    """Validate the whole inventory; raise ``InventoryError`` listing every problem."""
    problems: list[Problem] = []
    for host in hosts:
        problems.extend(_unknown_keys(host))
    problems.extend(_unknown_groups(hosts))
    problems.extend(_duplicate_hosts(hosts))
    fleet_data = _fleet_level_data(hosts, problems)

    name = fleet_data.get("fleet_name")
    if name is None or name == "":
        problems.append(
            Problem("inventory", "fleet_name", "required: a short name such as 'plant-a'")
        )
        name = "invalid"
    elif not isinstance(name, str) or not is_dns_name(name) or "." in name:
        # It names the state directory, the CA and every broker's files: nothing to escape.
        problems.append(
            Problem(
                "inventory",
                "fleet_name",
                f"{name!r} is not a fleet name: letters, digits and '-' only, starting with a "
                "letter or digit (such as 'plant-a')",
            )
        )
        name = "invalid"
    topic_root = str(fleet_data.get("fleet_topic_root", "devices")).rstrip("/")
    try:
        check_topic_name(topic_root)
    except ValueError as exc:
        problems.append(Problem("inventory", "fleet_topic_root", str(exc)))

    pki = _validate(PkiConfig, _strip(fleet_data, "pki_"), "inventory", "pki_", problems)
    roles = _roles(fleet_data.get("fleet_roles", {}), topic_root, problems)
    devices = _items(Device, fleet_data.get("fleet_devices", []), "fleet_devices", "id", problems)
    clients = _items(Client, fleet_data.get("fleet_clients", []), "fleet_clients", "name", problems)
    sites = _items(Site, fleet_data.get("fleet_sites", []), "fleet_sites", "name", problems)
    core_brokers = _names(fleet_data.get("fleet_core_brokers", []), "fleet_core_brokers", problems)
    brokers = [
        b for h in hosts if BROKERS_GROUP in h.groups if (b := _broker(h, problems)) is not None
    ]
    stations = [
        s for h in hosts if STATIONS_GROUP in h.groups if (s := _station(h, problems)) is not None
    ]

    _check_unique_identities(brokers, devices, clients, problems)
    _check_role_references(devices, clients, roles, problems)
    _check_broker_references(devices, clients, brokers, problems)
    _check_boards(stations, devices, brokers, problems)
    check_topology(sites, core_brokers, brokers, devices, clients, problems)

    if problems or pki is None:
        raise InventoryError(_merge_repeats(problems))
    return Fleet(
        name=name,
        topic_root=topic_root,
        brokers=brokers,
        devices=devices,
        clients=clients,
        roles=roles,
        stations=stations,
        pki=pki,
        sites=sites,
        core_brokers=core_brokers,
    )


KEY_PREFIXES = (*PREFIXED_MODELS, "fleet_")
# How alike a word must be to one of ours to be taken for a typo of it (difflib's ratio):
# "mosquito_" and "firewal_" are, "ssh_" and "lab_" are not.
TYPO_CUTOFF = 0.8


def _unknown_keys(host: RawHost) -> Iterable[Problem]:
    """Keys of ours that nothing reads: a known prefix with an unknown name, or a near-miss of
    a known prefix (``mosquito_persistence``), which would otherwise be silently ignored."""
    known = known_keys()
    for key in host.data:
        if key in known or key.startswith("_"):
            continue
        first_word = key.partition("_")[0] + "_"
        ours = key.startswith(KEY_PREFIXES)
        if not ours and not difflib.get_close_matches(
            first_word, KEY_PREFIXES, n=1, cutoff=TYPO_CUTOFF
        ):
            continue  # someone else's key (ssh_user, a user's own data)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        yield Problem(f"host {host.name}", key, f"unknown key{hint}")


def _merge_repeats(problems: list[Problem]) -> list[Problem]:
    """One line for a problem every host shares (a fleet-wide file sets the key for all)."""
    hosts_of: dict[tuple[str, str], list[str]] = {}
    merged: list[Problem] = []
    for problem in problems:
        if problem.where.startswith("host "):
            holders = hosts_of.setdefault((problem.key, problem.message), [])
            if not holders:
                merged.append(problem)
            holders.append(problem.where.removeprefix("host "))
        else:
            merged.append(problem)
    result = []
    for problem in merged:
        holders = hosts_of.get((problem.key, problem.message), [])
        if len(holders) > 1:
            shown = ", ".join(holders[:3]) + (
                f" and {len(holders) - 3} more" if len(holders) > 3 else ""
            )
            problem = Problem(f"hosts {shown}", problem.key, problem.message)
        result.append(problem)
    return result


def _unknown_groups(hosts: Sequence[RawHost]) -> Iterable[Problem]:
    """A group named like one of ours but not quite (``broker``) would roll out nothing."""
    ours = (BROKERS_GROUP, STATIONS_GROUP)
    seen: set[str] = set()
    for host in hosts:
        for group in host.groups:
            if group in ours or group in seen:
                continue
            seen.add(group)
            close = difflib.get_close_matches(group, ours, n=1, cutoff=TYPO_CUTOFF)
            if close:
                yield Problem(f"group {group}", "name", f"unknown group (did you mean {close[0]}?)")


def _duplicate_hosts(hosts: Sequence[RawHost]) -> Iterable[Problem]:
    """Two inventory names for one machine would get two rollouts racing on it."""
    first: dict[tuple[str, int], str] = {}
    for host in hosts:
        address = str(host.data.get("ssh_hostname") or host.name).lower()
        where = (address, int(host.data.get("ssh_port") or 22))
        if where in first:
            yield Problem(
                f"host {host.name}",
                "ssh_hostname",
                f"{address}:{where[1]} is also host {first[where]}: list each machine once",
            )
        else:
            first[where] = host.name


def _fleet_level_data(hosts: Sequence[RawHost], problems: list[Problem]) -> dict[str, Any]:
    """Fleet-wide keys must mean the same on every host; take them from the first host."""
    fleet_keys = {k for h in hosts for k in h.data if k in FLEET_KEYS or k.startswith("pki_")}
    data: dict[str, Any] = {}
    for key in sorted(fleet_keys):
        holders = [h for h in hosts if key in h.data]
        first = holders[0]
        data[key] = first.data[key]
        for other in holders[1:]:
            if other.data[key] != data[key]:
                problems.append(
                    Problem(
                        f"host {other.name}",
                        key,
                        f"differs from host {first.name}: fleet-wide keys must be set once "
                        "(group_data/all.py or the inventory's own group)",
                    )
                )
                break
    return data


def _strip(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The keys of one prefix, without it; unknown ones were already reported with a hint."""
    fields = PREFIXED_MODELS[prefix].model_fields
    return {
        k[len(prefix) :]: v
        for k, v in data.items()
        if k.startswith(prefix) and k[len(prefix) :] in fields
    }


def _validate(
    model: type[M], data: Mapping[str, Any], where: str, prefix: str, problems: list[Problem]
) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, where, prefix))
        return None


def _problems_from(exc: ValidationError, where: str, prefix: str) -> Iterable[Problem]:
    for error in exc.errors():
        location = list(error["loc"])
        key = prefix + (str(location[0]) if location else "")
        for part in location[1:]:
            key += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        yield Problem(where, key, message)


def _items(
    model: type[M], raw: object, key: str, id_field: str, problems: list[Problem]
) -> list[M]:
    if not isinstance(raw, list):
        problems.append(Problem("inventory", key, "must be a list"))
        return []
    items: list[M] = []
    for index, entry in enumerate(raw):
        ident = entry.get(id_field) if isinstance(entry, dict) else None
        kind = key.removeprefix("fleet_").rstrip("s")
        where = f"{kind} {ident}" if ident else f"{key}[{index}]"
        if not isinstance(entry, dict):
            problems.append(Problem(where, key, "each entry must be a mapping"))
            continue
        item = _validate(model, entry, where, "", problems)
        if item is not None:
            items.append(item)
    return items


def _names(raw: object, key: str, problems: list[Problem]) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        problems.append(Problem("inventory", key, "must be a list of broker host names"))
        return []
    return list(raw)


def _roles(raw: object, topic_root: str, problems: list[Problem]) -> dict[str, Role]:
    roles = dict(BUILTIN_ROLES)
    if not isinstance(raw, dict):
        problems.append(Problem("inventory", "fleet_roles", "must be a mapping of role -> rules"))
        raw = {}
    for name, spec in raw.items():
        role = _validate(Role, spec, f"role {name}", "", problems)
        if role is not None:
            roles[str(name)] = role
    return {name: _expand_root(role, topic_root) for name, role in roles.items()}


def _expand_root(role: Role, topic_root: str) -> Role:
    def expand(topics: list[str]) -> list[str]:
        return [t.replace("{root}", topic_root) for t in topics]

    return Role(read=expand(role.read), write=expand(role.write), readwrite=expand(role.readwrite))


def _broker(host: RawHost, problems: list[Problem]) -> Broker | None:
    where = f"host {host.name}"
    mosquitto = _validate(
        MosquittoSettings, _strip(host.data, "mosquitto_"), where, "mosquitto_", problems
    )
    firewall = _validate(
        FirewallSettings, _strip(host.data, "firewall_"), where, "firewall_", problems
    )
    hardening = _validate(
        SshHardeningSettings,
        _strip(host.data, "ssh_hardening_"),
        where,
        "ssh_hardening_",
        problems,
    )
    ssh_port = host.data.get("ssh_port") or 22
    if mosquitto is None or firewall is None or hardening is None:
        return None
    if hardening.enabled:
        problems.extend(_hardening_lockouts(host, hardening))
    ssh = firewall.ssh_port or int(ssh_port)
    for index, listener in enumerate(mosquitto.listeners):
        if listener.port == ssh:
            problems.append(
                Problem(where, f"mosquitto_listeners[{index}].port", f"{ssh} is the SSH port")
            )
    return Broker(
        name=host.name,
        ssh_hostname=str(host.data.get("ssh_hostname") or host.name),
        ssh_port=int(ssh_port),
        mosquitto=mosquitto,
        firewall=firewall,
        ssh_hardening=hardening,
    )


def _hardening_lockouts(host: RawHost, hardening: SshHardeningSettings) -> Iterable[Problem]:
    """The hardened sshd would refuse the way the rollout itself logs in: say so up front."""
    where = f"host {host.name}"
    if host.data.get("ssh_password"):
        yield Problem(
            where,
            "ssh_hardening_enabled",
            "the inventory logs in with ssh_password, which the hardening turns off (keys "
            "only): the next rollout would be locked out; log in with ssh_key instead",
        )
    if hardening.permit_root_login == "no" and host.data.get("ssh_user") == "root":
        yield Problem(
            where,
            "ssh_hardening_permit_root_login",
            "the inventory logs in as root (ssh_user), which 'no' would lock out: use "
            "prohibit-password or log in as a sudo user",
        )


def _station(host: RawHost, problems: list[Problem]) -> FlashStation | None:
    gateway = _validate(
        GatewaySettings, _strip(host.data, "espgw_"), f"host {host.name}", "espgw_", problems
    )
    return None if gateway is None else FlashStation(name=host.name, gateway=gateway)


def _check_unique_identities(
    brokers: list[Broker], devices: list[Device], clients: list[Client], problems: list[Problem]
) -> None:
    """Names share one PKI namespace: a device may not take a client's or broker's name."""
    names = [*(b.name for b in brokers), *(d.id for d in devices), *(c.name for c in clients)]
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(
                Problem(name, "name", f"used {count} times across brokers, devices and clients")
            )
    macs = Counter(d.mac for d in devices if d.mac)  # normalised: lower case
    for mac, count in macs.items():
        if count > 1:
            holders = ", ".join(d.id for d in devices if d.mac == mac)
            problems.append(
                Problem(f"devices {holders}", "mac", f"{mac} is given to {count} devices")
            )


def _check_role_references(
    devices: list[Device], clients: list[Client], roles: dict[str, Role], problems: list[Problem]
) -> None:
    for client in clients:
        for role in client.roles:
            if role not in roles:
                problems.append(Problem(f"client {client.name}", "roles", f"unknown role {role!r}"))
    for device in devices:
        for role in device.roles:
            if role not in roles:
                problems.append(Problem(f"device {device.id}", "roles", f"unknown role {role!r}"))
                continue
            too_wide = [t for t in roles[role].all_filters() if opens_other_devices(t)]
            if too_wide:
                problems.append(
                    Problem(
                        f"device {device.id}",
                        "roles",
                        f"role {role!r} grants {', '.join(map(repr, too_wide))}, which would "
                        "open every device's topics (or broker internals) to a device",
                    )
                )


def _check_broker_references(
    devices: list[Device], clients: list[Client], brokers: list[Broker], problems: list[Problem]
) -> None:
    known = {b.name for b in brokers}
    owners = [
        *((f"device {d.id}", d.brokers) for d in devices),
        *((f"client {c.name}", c.brokers) for c in clients),
    ]
    for where, names in owners:
        for name in names or []:
            if name not in known:
                problems.append(Problem(where, "brokers", f"{name!r} is not a broker host"))


def _check_boards(
    stations: list[FlashStation],
    devices: list[Device],
    brokers: list[Broker],
    problems: list[Problem],
) -> None:
    by_id = {d.id: d for d in devices}
    broker_names = {b.name for b in brokers}
    flashed: dict[str, str] = {}
    for station in stations:
        where = f"host {station.name}"
        settings = station.gateway
        if settings.boards and settings.wifi_ssid is None:
            problems.append(Problem(where, "espgw_wifi_ssid", "required when boards are listed"))
        if settings.boards and settings.wifi_passphrase is None:
            problems.append(
                Problem(where, "espgw_wifi_passphrase", "required when boards are listed")
            )
        for name in settings.brokers or []:
            if name not in broker_names:
                problems.append(Problem(where, "espgw_brokers", f"{name!r} is not a broker host"))
        ports: dict[str, int] = {}
        for index, board in enumerate(settings.boards):
            key = f"espgw_boards[{index}]"
            if board.port in ports:
                problems.append(
                    Problem(
                        where,
                        f"{key}.port",
                        f"{board.port} is also espgw_boards[{ports[board.port]}]'s port",
                    )
                )
            ports.setdefault(board.port, index)
            device = by_id.get(board.device)
            if device is None:
                problems.append(
                    Problem(where, f"{key}.device", f"{board.device!r} is not in fleet_devices")
                )
                continue
            if board.mac and device.mac and board.mac != device.mac:
                problems.append(
                    Problem(
                        where,
                        f"{key}.mac",
                        f"{board.mac} differs from device {device.id}'s mac {device.mac}",
                    )
                )
            previous = flashed.get(board.device)
            if previous:
                problems.append(
                    Problem(where, f"{key}.device", f"{board.device} is also on {previous}")
                )
            flashed[board.device] = f"{station.name} {board.port}"
