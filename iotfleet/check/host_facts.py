"""What the inside checks read on a broker, over one SSH connection, each fact read once.

Every command here only reads (stat, cat of public files, sha256sum of the key, ss,
systemctl, nft list, sshd -T, dpkg-query): a check never writes on a host.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from iotfleet.mosquitto import layout
from iotfleet.mosquitto.conf import MosquittoConfig, include_dirs, parse_config

FIREWALL_UNIT = "iotfleet-firewall"
SANDBOX_PROPERTIES = (
    "User",
    "DropInPaths",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "MainPID",
    "MemoryHigh",
    "MemoryMax",
)


class HostCommandError(Exception):
    """A read-only command failed on the host in a way that stops a check."""


@dataclass(frozen=True)
class FileStat:
    kind: str  # "regular file", "directory", ...
    owner: str
    group: str
    mode: str  # octal without leading zeros, as stat %a prints it

    @property
    def mode4(self) -> str:
        return self.mode.zfill(4)


@dataclass(frozen=True)
class ListeningSocket:
    address: str  # 0.0.0.0, ::, 127.0.0.1, ::1, * ...
    port: int
    processes: tuple[tuple[str, int], ...]  # (name, pid)

    @property
    def where(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )

    @property
    def loopback(self) -> bool:
        return self.address in ("127.0.0.1", "::1") or self.address.startswith("127.")


@dataclass(frozen=True)
class PackageState:
    status: str  # dpkg "want ok state", e.g. "install ok installed"; "" if unknown
    version: str


def parse_stat(output: str) -> dict[str, FileStat]:
    """Lines of ``stat -c '%F|%U|%G|%a|%n'``; missing paths are simply absent."""
    stats: dict[str, FileStat] = {}
    for line in output.splitlines():
        parts = line.split("|", 4)
        if len(parts) == 5:
            kind, owner, group, mode, path = parts
            stats[path] = FileStat(kind, owner, group, mode)
    return stats


@dataclass(frozen=True)
class TcpConnection:
    """An established TCP connection: ``local`` and ``peer`` as ``ip:port`` (IPv6 without
    brackets). A reconnect is a new connection: another local (ephemeral) port."""

    local: str
    peer: str


def _ss_address(field: str) -> str:
    address, _, port = field.rpartition(":")
    return f"{address.strip('[]').split('%', 1)[0]}:{port}"


def parse_established(output: str, process: str) -> list[TcpConnection]:
    """``ss -Htnp state established`` lines (Recv-Q Send-Q Local Peer users): ``process``'s
    connections."""
    connections = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 4 or process not in (n for n, _ in _SS_PROCESS.findall(line)):
            continue
        connections.append(TcpConnection(_ss_address(fields[2]), _ss_address(fields[3])))
    return connections


_SS_PROCESS = re.compile(r'\("([^"]+)",pid=(\d+)')


def parse_ss(output: str) -> list[ListeningSocket]:
    """``ss -Htlnp`` lines: State Recv-Q Send-Q Local:Port Peer:Port [users:(...)]."""
    sockets = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        local = fields[3]
        address, _, port = local.rpartition(":")
        address = address.strip("[]")
        if "%" in address:  # 0.0.0.0%lo style interface suffix
            address = address.split("%", 1)[0]
        if not port.isdigit():
            continue
        processes = tuple((name, int(pid)) for name, pid in _SS_PROCESS.findall(line))
        sockets.append(ListeningSocket(address, int(port), processes))
    return sockets


def parse_show(output: str) -> dict[str, str]:
    """``systemctl show -p A -p B`` -> {A: value, B: value}."""
    props: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    return props


_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([\d.]+)")


def parse_exposure(output: str) -> float | None:
    found = _EXPOSURE.search(output)
    return float(found[1]) if found else None


@dataclass(frozen=True)
class PackageOrigin:
    """Where the Mosquitto that runs comes from."""

    modified: tuple[str, ...]  # files of the package (not conffiles) whose MD5 differs
    running: str  # the running broker's executable ("" when none runs)
    sources: tuple[str, ...]  # where apt has the installed version from (dpkg status excluded)


DPKG_STATUS = "/var/lib/dpkg/status"
PACKAGED_BROKER = "/usr/sbin/mosquitto"
ORIGIN_COMMAND = (
    "dpkg --verify mosquitto 2>/dev/null | sed 's/^/verify /'; "
    "pid=$(systemctl show -p MainPID --value mosquitto); "
    '[ "${pid:-0}" != 0 ] && echo "running $(readlink /proc/$pid/exe)"; '
    "LC_ALL=C apt-cache policy mosquitto 2>/dev/null | sed 's/^/policy /'; true"
)


def parse_origin(output: str) -> PackageOrigin:
    """Output of :data:`ORIGIN_COMMAND`: ``dpkg --verify``, the running exe, ``apt-cache
    policy`` (its version table: a version line, then its sources indented deeper)."""
    modified: list[str] = []
    running = installed = version = ""
    sources: list[str] = []
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind == "verify" and len(fields) == 2 and fields[0][2:3] == "5":
            # "??5?????? c /etc/x" is a conffile (iotfleet rewrites those): only code counts.
            modified.append(fields[1])
        elif kind == "running":
            running = rest.strip()
        elif kind == "policy" and fields:
            depth = len(rest) - len(rest.lstrip())
            if fields[0] == "Installed:" and len(fields) > 1:
                installed = fields[1]
            elif fields[0] == "***" and len(fields) > 1:
                version = fields[1]
            elif depth <= 5 and not fields[0].endswith(":"):
                version = fields[0]
            elif depth > 5 and version == installed and fields[1:2] != [DPKG_STATUS]:
                sources.append(" ".join(fields[1:]))
    return PackageOrigin(tuple(modified), running, tuple(sources))


def parse_package(output: str) -> PackageState:
    """``dpkg-query -W -f='${Status}|${Version}'``."""
    status, _, version = output.strip().partition("|")
    return PackageState(status.strip(), version.strip())


class BrokerFacts:
    """Facts of one broker, read lazily over its testinfra host and cached."""

    def __init__(self, host: Any, name: str = "the host") -> None:
        self.host = host
        self.name = name
        self._stats: dict[tuple[str, ...], dict[str, FileStat]] = {}
        self._unreachable: str | None = None

    def _ssh(self, call: Any) -> Any:
        """Run ``call()`` (a testinfra command); a broken SSH connection fails this and every
        later check of the host at once, instead of each waiting for its own timeout."""
        if self._unreachable is not None:
            raise HostCommandError(self._unreachable)
        try:
            return call()
        except RuntimeError as exc:  # testinfra's ssh backend: ssh itself exited 255
            result = exc.args[0] if exc.args else None
            stderr = getattr(result, "stderr", "") or str(exc)
            self._unreachable = f"cannot reach {self.name} over SSH: {str(stderr).strip()[:300]}"
            raise HostCommandError(self._unreachable) from None

    def _run(self, command: str) -> Any:
        return self._ssh(lambda: self.host.run(command))

    def _output(self, command: str, *, ok: tuple[int, ...] = (0,)) -> str:
        result = self._run(command)
        if result.rc not in ok:
            raise HostCommandError(
                f"`{command}` exited {result.rc}: {(result.stderr or result.stdout).strip()[:300]}"
            )
        return str(result.stdout)

    @cached_property
    def package(self) -> PackageState:
        output = self._output("dpkg-query -W -f='${Status}|${Version}' mosquitto 2>/dev/null; true")
        return parse_package(output)

    @cached_property
    def package_origin(self) -> PackageOrigin:
        return parse_origin(self._output(ORIGIN_COMMAND))

    @cached_property
    def service_enabled(self) -> bool:
        return bool(self._ssh(lambda: self.host.service(layout.SERVICE).is_enabled))

    @cached_property
    def service_active(self) -> bool:
        return bool(self._ssh(lambda: self.host.service(layout.SERVICE).is_running))

    @cached_property
    def unit(self) -> dict[str, str]:
        flags = " ".join(f"-p {p}" for p in SANDBOX_PROPERTIES)
        return parse_show(self._output(f"systemctl show {layout.SERVICE} {flags}"))

    @property
    def main_pid(self) -> int:
        value = self.unit.get("MainPID", "0")
        return int(value) if value.isdigit() else 0

    @cached_property
    def processes(self) -> list[tuple[str, int]]:
        """(user, pid) of every process whose command is mosquitto."""
        output = self._output("ps -C mosquitto -o user:64=,pid= || true")
        found = []
        for line in output.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                found.append((parts[0], int(parts[1])))
        return found

    @cached_property
    def main_process_user(self) -> str | None:
        pid = self.main_pid
        if not pid:
            return None
        return self._output(f"ps -o user:64= -p {pid} || true").strip() or None

    @cached_property
    def config_path(self) -> str:
        """The file the running broker was started with (``-c``), else the packaged path."""
        pid = self.main_pid
        if pid:
            args = self._output(f"tr '\\0' '\\n' </proc/{pid}/cmdline || true").splitlines()
            for flag, value in itertools.pairwise(args):
                if flag in ("-c", "--config-file"):
                    return value
        return layout.CONFIG

    @cached_property
    def config_text(self) -> str:
        return self._output(f"cat {shlex.quote(self.config_path)}")

    @cached_property
    def included_configs(self) -> dict[str, str]:
        """``{path: text}`` of the files the main configuration includes, in reading order."""
        included: dict[str, str] = {}
        for directory in include_dirs(self.config_text):
            listing = self._output(
                f"for f in {shlex.quote(directory.rstrip('/'))}/*.conf; do "
                '[ -f "$f" ] && printf "%s\\n" "$f"; done; true'
            )
            for path in listing.splitlines():
                included[path] = self._output(f"cat {shlex.quote(path)}")
        return included

    @cached_property
    def config(self) -> MosquittoConfig:
        return parse_config(self.config_text, self.included_configs)

    def established_connections(self) -> list[TcpConnection]:
        """Mosquitto's established TCP connections (``ss``; read anew at each call)."""
        output = self._output("ss -Htnp state established")
        return parse_established(output, layout.SERVICE)

    def addresses_of(self, name: str) -> list[str]:
        """The addresses ``name`` resolves to on the host (``getent ahosts``), as the broker's
        own look-up sees it."""
        result = self._run(f"getent ahosts {shlex.quote(name)}")
        if result.rc != 0:
            return []
        return list(
            dict.fromkeys(
                line.split()[0] for line in str(result.stdout).splitlines() if line.split()
            )
        )

    def read_retained_as_health(
        self, host: str, port: int, topic: str, health_name: str, seconds: int = 5
    ) -> bytes | None:
        """The retained message on ``topic`` as the broker's own health identity (its
        certificate; a local connection to a certificate listener), None if none arrived."""
        command = (
            f"timeout {seconds + 5} mosquitto_sub -h {shlex.quote(host)} -p {int(port)} "
            f"--cafile {layout.CA_CHAIN} --cert {layout.HEALTH_CERT} --key {layout.HEALTH_KEY} "
            f"--insecure -i {shlex.quote(health_name)} -q 0 -C 1 -W {int(seconds)} "
            f"-t {shlex.quote(topic)}"
        )
        result = self._run(command)
        if result.rc != 0:
            return None
        return bytes(result.stdout_bytes).strip()

    def stats(self, paths: tuple[str, ...]) -> dict[str, FileStat]:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return parse_stat(self._output(f"stat -c '%F|%U|%G|%a|%n' {quoted} 2>/dev/null; true"))

    def stats_cached(self, paths: tuple[str, ...]) -> dict[str, FileStat]:
        """``stats`` read once per set of paths (one command for all of a broker's files)."""
        if paths not in self._stats:
            self._stats[paths] = self.stats(paths)
        return self._stats[paths]

    @cached_property
    def sockets(self) -> list[ListeningSocket]:
        return parse_ss(self._output("ss -Htlnp"))

    @cached_property
    def exposure_report(self) -> str:
        return self._output(f"systemd-analyze security {layout.SERVICE} --no-pager 2>&1", ok=(0, 1))

    @cached_property
    def firewall_ruleset(self) -> str:
        """``nft -j list ruleset``: every table, so no other one can open a port unseen."""
        return self._output("nft -j list ruleset")

    @cached_property
    def sshd_effective(self) -> str:
        """``sshd -T``: the configuration sshd would run with (drop-ins and defaults)."""
        return self._output("sshd -T")

    @cached_property
    def firewall_unit_enabled(self) -> bool:
        return bool(self._ssh(lambda: self.host.service(FIREWALL_UNIT).is_enabled))

    def read_public(self, path: str) -> bytes | None:
        """Content of a public file (certificate, chain, CRL, ACL); None if missing."""
        result = self._run(f"cat {shlex.quote(path)}")
        return result.stdout_bytes if result.rc == 0 else None

    def usernames(self, path: str) -> list[str] | None:
        """Usernames of a password file, cut on the host: no hash ever travels."""
        result = self._run(f"cut -d: -f1 {shlex.quote(path)}")
        if result.rc != 0:
            return None
        return [u for u in str(result.stdout).splitlines() if u and not u.startswith("#")]

    def sha256(self, path: str) -> str | None:
        """Digest of a file whose content must not travel (the broker's private key)."""
        result = self._run(f"sha256sum {shlex.quote(path)}")
        if result.rc != 0:
            return None
        return str(result.stdout).split()[0] if result.stdout.strip() else None
