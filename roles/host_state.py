"""Everything the broker roles read from a host, in one remote command per host and run.

pyinfra runs a fact command for every fact an operation reads: 30-odd commands per broker for
a rollout that changes nothing. Here a role states up front what it will read (``expect``), and
the first read on a host gathers all of it at once (``host_state``): the owner, group, mode and
SHA-256 of files, directories, units, packages, dpkg's health, the SSH session and the loaded
nftables table. Operations then decide locally and run commands only for what differs.

Reads stay as fresh as pyinfra's own facts: a snapshot is reused only until an operation on
the host ran a command (then the next read gathers again), and a run that asked for
confirmation reads again when it executes (the host may have changed during the prompt).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Literal
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand

from iotfleet.mosquitto.managed_file import FileState
from iotfleet.roles.dpkg_health import PACKAGE_HEALTH

PathKind = Literal["file", "directory", "link", "other"]
_KINDS: dict[str, PathKind] = {"f": "file", "d": "directory", "l": "link", "o": "other"}


@dataclass(frozen=True)
class HostQuery:
    """What to read from a host. Merged with ``|``; a query covers another if it asks for at
    least everything the other asks for."""

    paths: frozenset[str] = frozenset()  # stat (+ SHA-256 of regular files)
    units: frozenset[str] = frozenset()  # systemd ActiveState, UnitFileState, LoadState
    packages: frozenset[str] = frozenset()  # installed Debian packages and their versions
    package_health: bool = False  # a stale service-start guard, an interrupted dpkg
    ssh_connection: bool = False  # the SSH session the run is on
    ruleset_record: str | None = None  # read the loaded nftables table; its recorded digest

    def __or__(self, other: HostQuery) -> HostQuery:
        return HostQuery(
            paths=self.paths | other.paths,
            units=self.units | other.units,
            packages=self.packages | other.packages,
            package_health=self.package_health or other.package_health,
            ssh_connection=self.ssh_connection or other.ssh_connection,
            ruleset_record=self.ruleset_record or other.ruleset_record,
        )

    def without(self, known: HostQuery) -> HostQuery:
        """What this query asks for that ``known`` did not."""
        return HostQuery(
            paths=self.paths - known.paths,
            units=self.units - known.units,
            packages=self.packages - known.packages,
            package_health=self.package_health and not known.package_health,
            ssh_connection=self.ssh_connection and not known.ssh_connection,
            ruleset_record=None if known.ruleset_record else self.ruleset_record,
        )

    def __bool__(self) -> bool:
        return bool(
            self.paths or self.units or self.packages or self.package_health
            or self.ssh_connection or self.ruleset_record
        )  # fmt: skip

    def __repr__(self) -> str:  # pyinfra prints fact arguments: keep it one short line
        parts = [f"{len(self.paths)} paths", f"{len(self.units)} units"]
        parts.append(f"{len(self.packages)} packages")
        parts += [
            flag
            for flag, wanted in (
                ("package health", self.package_health),
                ("ssh", self.ssh_connection),
                ("ruleset", self.ruleset_record is not None),
            )
            if wanted
        ]
        return f"HostQuery({', '.join(parts)})"


@dataclass(frozen=True)
class PathState:
    """A path that exists: its kind, and for files and directories owner, group and mode
    (as ``stat -c %a`` prints it), for regular files the SHA-256 of the content."""

    kind: PathKind
    owner: str | None = None
    group: str | None = None
    mode: str | None = None
    sha256: str | None = None

    def file_state(self) -> FileState | None:
        """The regular file as ``ManagedFile.matches`` compares it; None if not one."""
        if self.kind != "file" or None in (self.owner, self.group, self.mode, self.sha256):
            return None
        return FileState(str(self.owner), str(self.group), str(self.mode), str(self.sha256))


@dataclass(frozen=True)
class UnitState:
    """A systemd unit as ``systemctl show`` reports it."""

    active: str = "inactive"
    unit_file: str = ""
    load: str = "not-found"
    read: bool = True  # False: systemctl answered nothing (no D-Bus, no systemd)

    @property
    def running(self) -> bool:
        return self.active in ("active", "activating", "reloading")

    @property
    def enabled(self) -> bool:
        """Enabled for good (``enabled-runtime`` is gone at the next boot)."""
        return self.unit_file == "enabled"


@dataclass(frozen=True)
class HostSnapshot:
    """What a ``HostQuery`` read; paths that do not exist and packages that are not
    installed are absent from their dictionaries."""

    paths: dict[str, PathState] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    packages: dict[str, list[str]] = field(default_factory=dict)
    stale_guard: bool = False
    dpkg_interrupted: bool = False
    ssh_connection: tuple[str, int] | None = None
    ruleset: tuple[str | None, str | None, str | None] = (None, None, None)

    def file(self, path: str) -> FileState | None:
        """The regular file at ``path``, or None (missing, or not a regular file)."""
        state = self.paths.get(path)
        return state.file_state() if state else None

    def unit(self, name: str) -> UnitState:
        """The unit's state; not read (``read`` false) if the snapshot has no answer for it."""
        return self.units.get(unit_name(name), UnitState(read=False))

    def merged(self, newer: HostSnapshot, query: HostQuery) -> HostSnapshot:
        """This snapshot with what ``newer`` read for ``query`` on top."""
        return HostSnapshot(
            paths={**self.paths, **newer.paths},
            units={**self.units, **newer.units},
            packages={**self.packages, **newer.packages},
            stale_guard=newer.stale_guard if query.package_health else self.stale_guard,
            dpkg_interrupted=(
                newer.dpkg_interrupted if query.package_health else self.dpkg_interrupted
            ),
            ssh_connection=newer.ssh_connection if query.ssh_connection else self.ssh_connection,
            ruleset=newer.ruleset if query.ruleset_record else self.ruleset,
        )


def unit_name(service: str) -> str:
    """``mosquitto`` -> ``mosquitto.service``; a name with a unit suffix stays as it is."""
    return service if "." in service else f"{service}.service"


# -- the one remote command ------------------------------------------------------------------

_PATHS = (
    'for p in {paths}; do if [ -L "$p" ]; then printf "p l - - - - %s\\n" "$p"; '
    'elif [ -f "$p" ]; then printf "p f %s %s %s\\n" "$(stat -c "%U %G %a" "$p")" '
    '"$(sha256sum <"$p" | cut -d" " -f1)" "$p"; '
    'elif [ -d "$p" ]; then printf "p d %s - %s\\n" "$(stat -c "%U %G %a" "$p")" "$p"; '
    'elif [ -e "$p" ]; then printf "p o - - - - %s\\n" "$p"; fi; done 2>/dev/null'
)
_UNITS = (
    'for u in {units}; do printf "u %s %s\\n" "$u" "$(systemctl show -p ActiveState '
    '-p UnitFileState -p LoadState "$u" 2>/dev/null | tr "\\n" " ")"; done'
)
_PACKAGES = (
    "dpkg-query -W -f='k ${{db:Status-Abbrev}}|${{Package}}|${{Version}}\\n' {packages} 2>/dev/null"
)
_SSH = 'printf "s %s\\n" "${SSH_CONNECTION:-}"'
# -t: without the elements of sets (the limit's sources change all the time).
_RULESET = (
    "if nft list table inet iotfleet >/dev/null 2>&1; then "
    "printf 'r1 %s\\n' \"$(nft list table inet iotfleet | "
    'sed -n \'s/.*comment "iotfleet ruleset \\([0-9a-f]*\\)".*/\\1/p\' | head -n1)"; '
    "printf 'r2 %s\\n' \"$(nft -t list table inet iotfleet | sha256sum | cut -d' ' -f1)\"; "
    "printf 'r3 %s\\n' \"$(cat {recorded} 2>/dev/null)\"; fi"
)


def query_command(query: HostQuery) -> str:
    """The shell command that reads ``query``: one tagged line per thing read; it never
    fails (a path removed meanwhile is simply not listed)."""
    parts = []
    if query.ssh_connection:
        parts.append(_SSH)
    if query.paths:
        parts.append(_PATHS.format(paths=" ".join(shlex.quote(p) for p in sorted(query.paths))))
    if query.units:
        parts.append(_UNITS.format(units=" ".join(shlex.quote(u) for u in sorted(query.units))))
    if query.packages:
        names = " ".join(shlex.quote(p) for p in sorted(query.packages))
        parts.append(_PACKAGES.format(packages=names))
    if query.package_health:
        parts.append(PACKAGE_HEALTH)
    if query.ruleset_record:
        parts.append(_RULESET.format(recorded=shlex.quote(query.ruleset_record)))
    return "; ".join([*parts, "true"])


def parse_output(lines: list[str]) -> HostSnapshot:
    """The snapshot of ``query_command``'s output (lines it does not know are ignored)."""
    paths: dict[str, PathState] = {}
    units: dict[str, UnitState] = {}
    packages: dict[str, list[str]] = {}
    health: set[str] = set()
    ssh: tuple[str, int] | None = None
    ruleset: dict[str, str | None] = {}
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "p":
            fields = rest.split(" ", 5)
            if len(fields) == 6 and fields[0] in _KINDS:
                kind, owner, group, mode, digest, path = fields
                known = [None if value == "-" else value for value in (owner, group, mode)]
                paths[path] = PathState(
                    _KINDS[kind], known[0], known[1], known[2], None if digest == "-" else digest
                )
        elif tag == "u":
            name, _, props = rest.partition(" ")
            values = dict(item.split("=", 1) for item in props.split() if "=" in item)
            units[name] = UnitState(
                values.get("ActiveState", "inactive"),
                values.get("UnitFileState", ""),
                values.get("LoadState", "not-found"),
                read="ActiveState" in values,
            )
        elif tag == "k":
            status, _, name_version = rest.partition("|")
            name, _, version = name_version.partition("|")
            if len(status) >= 2 and status[0] in "ih" and status[1] == "i" and name:
                packages.setdefault(name, []).append(version)
        elif tag == "h":
            health.add(rest.strip())
        elif tag == "s":
            parts = rest.split()
            ssh = (parts[0], int(parts[3])) if len(parts) == 4 and parts[3].isdigit() else None
        elif tag in ("r1", "r2", "r3"):
            ruleset[tag] = rest.strip() or None
    return HostSnapshot(
        paths=paths,
        units=units,
        packages=packages,
        stale_guard="stale-guard" in health,
        dpkg_interrupted="dpkg-interrupted" in health,
        ssh_connection=ssh,
        ruleset=(ruleset.get("r1"), ruleset.get("r2"), ruleset.get("r3")),
    )


class HostState(FactBase[HostSnapshot]):
    """Everything a ``HostQuery`` asks for, read in one command."""

    @staticmethod
    def default() -> HostSnapshot:
        return HostSnapshot()

    def command(self, query: HostQuery) -> str:
        return query_command(query)

    def process(self, output: list[str]) -> Any:
        return parse_output(output)


# -- one read per host, as long as it is fresh -----------------------------------------------


@dataclass
class _Read:
    token: tuple[bool, int]
    query: HostQuery
    snapshot: HostSnapshot


# pyinfra state -> host name -> what the run's roles said they will read / the last read.
_expected: WeakKeyDictionary[Any, dict[str, HostQuery]] = WeakKeyDictionary()
_reads: WeakKeyDictionary[Any, dict[str, _Read]] = WeakKeyDictionary()


def expect(query: HostQuery) -> None:
    """Say that this run's operations on the current host will read ``query``: the first
    read gathers it together with everything else expected (one command, not one each)."""
    expected = _expected.setdefault(host.state, {})
    expected[host.name] = expected.get(host.name, HostQuery()) | query


_LOCAL_ONLY = "_iotfleet_local_only"


def local_only(function: Any) -> Any:
    """Mark a ``python.call`` function as one that changes nothing on the host (the PKI commit
    on the control machine): running it keeps the host's snapshot fresh."""
    setattr(function, _LOCAL_ONLY, True)
    return function


def _touched_host(meta: Any) -> bool:
    # OperationMeta keeps what it ran in _commands (its ``executed`` reads the same).
    commands = getattr(meta, "_commands", None) or []
    return any(
        not (isinstance(c, FunctionCommand) and getattr(c.function, _LOCAL_ONLY, False))
        for c in commands
    )


def _freshness() -> tuple[bool, int]:
    """Changes when a snapshot of the current host may be out of date: once an operation on
    it ran a command, and between a run's planning and its execution after a prompt."""
    state = host.state
    confirmed_later = bool(state.is_executing and state.check_for_changes)
    ran = sum(1 for data in state.ops[host].values() if _touched_host(data.operation_meta))
    return confirmed_later, ran


def host_state(query: HostQuery) -> HostSnapshot:
    """The current host's state for ``query``, read at most once while it stays fresh."""
    reads = _reads.setdefault(host.state, {})
    token = _freshness()
    last = reads.get(host.name)
    if last is None or last.token[0] != token[0]:
        # The first read of the run (or of its execution, after a prompt): all that is expected.
        wanted = query | _expected.get(host.state, {}).get(host.name, HostQuery())
        last = reads[host.name] = _Read(token, wanted, host.get_fact(HostState, query=wanted))
    elif last.token != token:
        # An operation changed the host since: read again what this one asks for.
        last = reads[host.name] = _Read(token, query, host.get_fact(HostState, query=query))
    missing = query.without(last.query)
    if missing:
        newer = host.get_fact(HostState, query=missing)
        last.snapshot = last.snapshot.merged(newer, missing)
        last.query = last.query | missing
    return last.snapshot
